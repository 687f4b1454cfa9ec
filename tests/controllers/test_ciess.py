"""CIESSController: actions, transitions, episodes, archive, retraining, resumption."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
from fakes import (
    FakeEnvironment,
    _seed_and_clear,  # noqa: F401  (the autouse fixture)
    drive,
    make_observation,
)

from tfembsize.budget import Budget
from tfembsize.controllers import CIESSController, Decision
from tfembsize.controllers.ciess_policy import popularity_feature, random_walk, state_features
from tfembsize.records import Feedback
from tfembsize.testing import ControllerContract

SMALL = {"hidden": (8, 8), "batch_size": 32}


def small(sparsity=0.5, **kwargs):
    options = {"episodes": 2, "iterations": 2, "seed": 0, **SMALL}
    options.update(kwargs)
    return CIESSController(sparsity, **options)


class TestCIESSContract(ControllerContract):
    may_miss_targets = True

    def make_controller(self, sparsity, seed=0):
        return CIESSController(sparsity, episodes=1, iterations=3, top_k=2, seed=seed, **SMALL)


class _Stub:
    """Replaces an agent's actor (constant size) and critic (peaked at ``best``)."""

    def __init__(self, agent, size, best):
        agent.act = lambda states: np.full(len(states), float(size))
        agent.q1 = lambda states, actions: -np.abs(np.asarray(actions, np.float64) - best)


def _copy(gen):
    g = np.random.default_rng()
    g.bit_generator.state = gen.bit_generator.state
    return g


def test_action_is_the_walk_candidate_the_critic_scores_highest_plus_shared_noise():
    obs = make_observation(d_max=64)
    c = small(walk_length=5, walk_radius=5, noise_std=3.0)
    c.ask(obs)  # builds the agents
    c.tell(c.pending, FakeEnvironment(obs).step(c.pending))
    for side in ("user", "item"):
        _Stub(c.agent(side), size=30, best=21)
    gen = _copy(c._gen)
    decision = c.ask(obs)
    eps = gen.normal(0.0, 3.0)
    users, items = obs.sizes_from_plan(decision.plan)
    for got, n in ((users, obs.num_users), (items, obs.num_items)):
        walk = random_walk(
            np.full(n, 30), length=5, radius=5, d_max=64, weighting="inverse", rng=gen
        )
        best = walk[np.arange(n), np.argmin(np.abs(walk - 21), axis=1)]
        np.testing.assert_array_equal(got, np.clip(np.rint(best + eps), 1, 64))
    assert decision.info["noise"] == pytest.approx(eps)
    assert decision.budget is None and decision.mode == "scratch" and decision.phase == "search"


def test_shared_noise_shifts_every_entity_alike_per_entity_noise_does_not():
    obs = make_observation(d_max=64)
    for noise, distinct in (("shared", 1), ("per_entity", None)):
        c = small(walk_length=0, noise=noise, noise_std=4.0, seed=3)
        c.ask(obs)
        c.tell(c.pending, FakeEnvironment(obs).step(c.pending))
        _Stub(c.agent("user"), size=30, best=0)
        _Stub(c.agent("item"), size=30, best=0)
        users, _ = obs.sizes_from_plan(c.ask(obs).plan)
        if distinct:
            assert len(set(users.tolist())) == 1  # one draw for every entity
        else:
            assert len(set(users.tolist())) > 5


def test_ou_noise_is_shared_and_restarts_every_episode():
    obs = make_observation(d_max=64)
    c = small(noise_distribution="ou", episodes=2, iterations=2)
    assert c.noise_std == 40.0 and c.get_config()["noise_distribution"] == "ou"
    env = FakeEnvironment(obs)
    first, second = (d.info["noise"] for d, _ in drive(c, env, steps=2))
    gen = _copy(c._gen)
    third = c.ask(obs).info["noise"]  # episode 1, iteration 0
    # Episode 0 steps the process twice from 0; episode 1 starts from 0 again.
    assert second != pytest.approx(first)
    assert third == pytest.approx(40.0 * 0.01**0.5 * gen.normal())
    with pytest.raises(ValueError, match="noise='shared' with noise_distribution='ou'"):
        CIESSController(0.5, noise="per_entity", noise_distribution="ou")
    # The default distribution is left out of the config (states saved before it restore).
    assert "noise_distribution" not in small().get_config()


def test_transitions_rewards_and_episode_reset_by_hand():
    obs = make_observation(d_max=32)
    env = FakeEnvironment(obs)
    c = small(episodes=2, iterations=2, reward_weight=0.3)
    steps = drive(c, env, steps=3)
    buf = c.replay_buffer("user").contents()
    n = obs.num_users
    assert len(buf.rewards) == 3 * n  # one transition per entity and step
    pop = popularity_feature(obs.user_frequencies)
    full = state_features(pop, np.full(n, 32), np.ones(n), 32)
    for t, (decision, feedback) in enumerate(steps):
        rows = slice(t * n, (t + 1) * n)
        sizes, _ = obs.sizes_from_plan(decision.plan)
        ratio = feedback.user_quality_ratio
        np.testing.assert_array_equal(buf.actions[rows, 0], sizes)
        np.testing.assert_allclose(buf.rewards[rows], ratio - 0.3 * (sizes / 32) ** 2, rtol=1e-5)
        np.testing.assert_allclose(buf.next_states[rows], state_features(pop, sizes, ratio, 32))
        if t in (0, 2):  # an episode starts from full size and full quality
            np.testing.assert_allclose(buf.states[rows], full)
        else:  # inside an episode the state is the last step's outcome
            np.testing.assert_allclose(buf.states[rows], buf.next_states[(t - 1) * n : t * n])
    archive = c.archive()
    assert len(archive) == 3
    assert archive.episode.tolist() == [0, 0, 1] and archive.step.tolist() == [0, 1, 2]
    for t, (decision, feedback) in enumerate(steps):
        assert archive.params[t] == decision.plan.total_params()
        assert archive.mean_ratio[t] == pytest.approx(feedback.mean_entity_ratio())
        assert archive.density[t] == pytest.approx(decision.plan.total_params() / (100 * 32))
    assert c.agent("user").updates.numpy() == 3  # G = 1 update per step


def test_raw_reward_uses_the_raw_quality():
    obs = make_observation(d_max=32)
    c = small(reward_quality="raw")
    assert c.reward_weight == 0.01
    (decision, feedback), *_ = drive(c, FakeEnvironment(obs), steps=1)
    sizes, _ = obs.sizes_from_plan(decision.plan)
    want = feedback.user_quality - 0.01 * ((sizes - 1) / 32) ** 2
    np.testing.assert_allclose(c.replay_buffer("user").contents().rewards, want, rtol=1e-5)


def test_retraining_takes_the_top_masks_within_each_budget_and_reports_misses():
    obs = make_observation(d_max=32)
    env = FakeEnvironment(obs)
    c = CIESSController((0.4, 0.5, 0.96), episodes=2, iterations=3, top_k=2, seed=1, **SMALL)
    steps = drive(c, env)
    archive = c.archive()
    full = obs.num_rows * 32
    assert c.missed_targets() == [0.96]
    assert c.best_plan(0.96) is None
    finals = [d for d, _ in steps if d.phase == "final"]
    assert {d.sparsity for d in finals} == {0.4, 0.5}
    for target in (0.4, 0.5):
        budget = Budget(sparsity=target, d_max=32)
        limit = budget.max_params_for(obs.num_rows)
        eligible = np.flatnonzero(archive.params <= limit)
        ranked = sorted(eligible, key=lambda i: (-archive.mean_ratio[i], i))[:2]
        mine = [d for d in finals if d.sparsity == target]
        assert [d.info["archive_index"] for d in mine] == [int(i) for i in ranked]
        for d in mine:
            assert d.mode == "scratch" and d.budget == budget
            assert d.plan.total_params() <= limit < full
        # The winner is the best validation mean entity ratio of the retrained masks.
        values = c.retrain_values(target)
        best = mine[int(np.argmax(values))].plan
        assert c.best_plan(target) == best


def test_search_only_best_plan_is_the_best_archived_mask_within_budget():
    obs = make_observation(d_max=32)
    c = small(0.5, retrain=False, episodes=1, iterations=3)
    drive(c, FakeEnvironment(obs))
    assert c.done and c.iteration == 3
    a = c.archive()
    ok = np.flatnonzero(a.params <= Budget(sparsity=0.5, d_max=32).max_params_for(obs.num_rows))
    i = ok[np.argmax(a.mean_ratio[ok])]
    assert c.best_plan() == obs.plan_from_sizes(a.user_sizes[i], a.item_sizes[i])


def test_feedback_without_entity_ratios_is_a_clear_error():
    obs = make_observation()
    c = small()
    decision = c.ask(obs)
    with pytest.raises(ValueError, match="per-entity quality ratios"):
        c.tell(decision, Feedback(quality=0.1, quality_ratio=0.5))


def test_metrics_per_iteration():
    obs = make_observation()
    c = small()
    drive(c, FakeEnvironment(obs), steps=2)
    m = c.metrics()
    for key in (
        "user/reward",
        "item/reward",
        "user/size",
        "item/size",
        "user/critic_loss",
        "item/critic_loss",
        "user/actor_loss",  # the second update is the first delayed actor update
        "density",
        "mean_ratio",
    ):
        assert key in m and np.isfinite(m[key]), key


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"episodes": 0}, r"`episodes` must be a positive integer. Received: episodes=0"),
        ({"walk_length": -1}, r"`walk_length` must be an integer >= 0. Received: walk_length=-1"),
        ({"walk_weighting": "x"}, r"`walk_weighting` must be one of"),
        ({"noise": "ou"}, r"`noise` must be one of"),
        ({"noise_std": -1.0}, r"`noise_std` must be a number >= 0. Received: noise_std=-1.0"),
        ({"reward_quality": "log"}, r"`reward_quality` must be one of"),
        ({"train_epochs": 0}, r"`train_epochs` must be a positive number"),
        ({"monitor": "best"}, r"`monitor` must be 'entity_ratio', 'quality' or a metric"),
        ({"hidden": ()}, r"`hidden` must name at least one layer width"),
    ],
)
def test_bad_configuration(kwargs, message):
    with pytest.raises(ValueError, match=message):
        CIESSController(0.9, **kwargs)


# Resumption under the search loop ----------------------------------------------------------------
class _LoopEnv:
    """`FakeEnvironment` behind the search loop's environment interface, with a crash point."""

    def __init__(self, obs, crash_at=None):
        self.fake = FakeEnvironment(obs)
        self.obs = obs
        self.crash_at = crash_at
        self.reference = Feedback(
            quality=0.2,
            user_quality=np.full(obs.num_users, 0.2),
            item_quality=np.full(obs.num_items, 0.2),
        )

    def observation(self):
        return self.obs.replace(reference=self.reference)

    def step(self, plan, mode="scratch", **kwargs):
        if self.crash_at is not None and self.fake.steps == self.crash_at:
            raise KeyboardInterrupt("killed")
        return self.fake.step(Decision(plan, mode))


def _run(directory, crash_points, obs):
    from tfembsize.search import run

    for point in [*crash_points, None]:
        env = _LoopEnv(obs)
        controller = CIESSController((0.4, 0.6), episodes=2, iterations=3, top_k=2, seed=5, **SMALL)
        if point is not None:
            # The loop resumes at the first uncommitted step; the env crashes `point` steps on.
            env.crash_at = point
        try:
            result = run(controller, env, directory, verbose=0, tensorboard=False)
        except KeyboardInterrupt:
            continue
        return controller, result
    raise AssertionError("unreachable")


def test_interrupted_and_resumed_run_equals_an_uninterrupted_one(tmp_path):
    obs = make_observation(d_max=32)
    rng = np.random.default_rng(7)
    crashes = sorted(rng.choice(np.arange(1, 6), size=2, replace=False).tolist())
    # Each env restarts its step count at 0, so the crash points are per attempt.
    a, ra = _run(tmp_path / "a", [], obs)
    b, rb = _run(tmp_path / "b", crashes, obs)
    assert len(ra.history) == len(rb.history) == a.iteration
    for x, y in zip(ra.history, rb.history, strict=True):
        assert x.plan == y.plan
    archive_a, archive_b = a.archive(), b.archive()
    for field in ("user_sizes", "item_sizes", "params", "mean_ratio", "episode"):
        np.testing.assert_array_equal(getattr(archive_a, field), getattr(archive_b, field))
    for side in ("user", "item"):
        for u, v in zip(
            a.replay_buffer(side).contents(), b.replay_buffer(side).contents(), strict=True
        ):
            np.testing.assert_array_equal(u, v)
        for u, v in zip(
            a.agent(side).actor.get_weights(), b.agent(side).actor.get_weights(), strict=True
        ):
            np.testing.assert_array_equal(u, v)
        for u, v in zip(
            a.agent(side).target_critic2.get_weights(),
            b.agent(side).target_critic2.get_weights(),
            strict=True,
        ):
            np.testing.assert_array_equal(u, v)
    assert a.best_plans() == b.best_plans()
    assert a.get_state()["controller"] == b.get_state()["controller"]


def test_buffers_and_archive_are_appended_not_rewritten(tmp_path):
    obs = make_observation(d_max=32)
    a, result = _run(tmp_path, [], obs)
    logs = tmp_path / "controller_logs"
    search = sum(1 for r in result.history if r.info.get("phase", "search") == "search")
    for name in ("user_buffer", "item_buffer", "archive"):
        chunks = sorted(os.listdir(logs / name))
        assert len(chunks) == search, name  # one chunk per search step, none rewritten
    manifest = json.loads((tmp_path / "run.json").read_text())
    assert manifest["finished"] is True


def test_top_masks_filled_to_the_budget_keep_the_ranking():
    obs = make_observation(d_max=32)
    c = CIESSController((0.5, 0.8), episodes=2, iterations=3, top_k=2, seed=1, **SMALL)
    drive(c, FakeEnvironment(obs))
    for target in (0.5, 0.8):
        limit = Budget(sparsity=target, d_max=32).max_params_for(obs.num_rows)
        plain, filled = c.top_masks(target), c.top_masks(target, fill=True)
        if plain.missed:
            assert filled.missed
            continue
        assert [e.index for e in filled.entries][:1] == [e.index for e in plain.entries][:1]
        for e in filled.entries:
            assert e.filled and e.plan.total_params() == limit  # every unit of B(c) spent
            new_u, _ = obs.sizes_from_plan(e.plan)
            old_u, _ = obs.sizes_from_plan(e.candidate.plan)
            smaller = old_u[:, None] < old_u[None, :]
            assert np.all((new_u[:, None] <= new_u[None, :])[smaller])  # the shape is kept
            assert new_u.sum() >= old_u.sum()
        assert all(not e.filled for e in plain.entries)
    assert not c.top_masks(0.5).missed  # the test is not vacuous
