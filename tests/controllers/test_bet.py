from __future__ import annotations

import glob
import os

import numpy as np
import pytest
import tensorflow as tf
from fakes import (
    FakeEnvironment,
    _seed_and_clear,  # noqa: F401  (no Keras session reset needed)
    drive,
    make_observation,
)

from tfembsize.budget import Budget
from tfembsize.controllers import ES, MR, BETController
from tfembsize.controllers.bet_sampler import frequency_order
from tfembsize.records import Feedback
from tfembsize.testing import ControllerContract

SMALL = {"search_iterations": 4, "num_candidates": 6, "top_k": 2}


def small_bet(sparsity=0.9, seed=0, **kwargs):
    return BETController(sparsity=sparsity, seed=seed, **{**SMALL, **kwargs})


class TestBETContract(ControllerContract):
    def make_controller(self, sparsity, seed=0):
        return small_bet(sparsity, seed)


def test_schedule_modes_and_training_lengths():
    obs = make_observation()
    controller = small_bet(search_iterations=6, top_k=2)
    assert controller.num_iterations == 8
    steps = drive(controller, FakeEnvironment(obs))
    search, final = [d for d, _ in steps[:6]], [d for d, _ in steps[6:]]
    assert [d.info["strategy"] for d in search] == [
        "predict", "predict", "predict", "random", "nearest", "predict",
    ]  # fmt: skip
    assert all(d.mode == "snapshot" and d.phase == "search" for d in search)
    assert all(d.train_epochs == 10 and d.train_steps is None for d in search)
    for d in search:
        if d.info["strategy"] == "predict":
            assert d.info["predicted_fitness"] == d.info["predicted_max"]
    assert len(final) == 2
    assert all(d.mode == "scratch" and d.phase == "final" for d in final)
    assert all(d.train_steps is None and d.train_epochs is None for d in final)
    # The retrained actions are the two best of the search, best first.
    best = sorted(((f.quality_ratio, i) for i, (_, f) in enumerate(steps[:6])), reverse=True)
    assert [d.info["search_iteration"] for d in final] == [best[0][1], best[1][1]]
    assert controller.done and len(controller.archive()) == 6
    steps_controller = small_bet(finetune_steps=300)
    decision = steps_controller.ask(obs)
    assert decision.train_steps == 300 and decision.train_epochs is None


def test_nearest_strategy_picks_the_candidate_closest_to_the_best_archived_action():
    obs = make_observation()
    controller = small_bet(num_candidates=12, strategy_cycle=("random", "nearest"))
    env = FakeEnvironment(obs)
    drive(controller, env, steps=1)
    state = controller.get_state()
    decision = controller.ask(obs)
    assert decision.info["strategy"] == "nearest"
    # Replay the candidate draw from the generator state before the ask.
    rng = np.random.default_rng()
    rng.bit_generator.state = state["controller"]["searches"][0]["rng"]
    sampler, surrogate = controller.sampler(), controller.surrogate()
    batch = sampler.sample(12, rng)
    ranked = [np.stack([sampler.rank_sizes(c)[s] for c in batch.counts]) for s in (0, 1)]
    archive = controller.archive()
    best = sampler.rank_sizes(archive.counts[np.argmax(archive.fitness)])
    distances = np.linalg.norm(surrogate.embed(ranked) - surrogate.embed(best), axis=1)
    assert decision.info["candidate"] == int(np.argmin(distances))
    users, items = sampler.entity_sizes(batch.counts[decision.info["candidate"]])
    assert decision.plan == obs.plan_from_sizes(users, items)


def test_plans_give_larger_sizes_to_more_frequent_entities():
    obs = make_observation(num_users=80, num_items=120)
    controller = small_bet()
    for decision, _ in drive(controller, FakeEnvironment(obs)):
        users, items = obs.sizes_from_plan(decision.plan)
        for f, sizes in ((obs.user_frequencies, users), (obs.item_frequencies, items)):
            assert (np.diff(sizes[frequency_order(f)]) <= 0).all()


def test_several_sparsities_each_with_its_own_budget_and_independent_search():
    obs = make_observation()
    both = small_bet((0.8, 0.95), seed=3)
    steps = drive(both, FakeEnvironment(obs))
    per = SMALL["search_iterations"] + SMALL["top_k"]
    assert [d.sparsity for d, _ in steps] == [0.8] * per + [0.95] * per
    for d, _ in steps:
        limit = Budget(sparsity=d.sparsity, d_max=obs.d_max).max_params_for(obs.num_rows)
        assert d.plan.total_params() <= limit
    alone = small_bet(0.95, seed=3)
    steps_alone = drive(alone, FakeEnvironment(obs))
    assert [d.plan for d, _ in steps[per:]] == [d.plan for d, _ in steps_alone]
    assert both.archive(0.95) == alone.archive()
    with pytest.raises(ValueError, match="several sparsities"):
        both.best_plan()


def _run(controller, obs, *, save_at=(), directory=None, factory=None):
    """Drives to the end; at each step number in `save_at` saves, rebuilds and restores."""
    env = FakeEnvironment(obs)
    decisions = []
    while not controller.done:
        if len(decisions) in save_at:
            pending = controller.ask(obs) if len(decisions) % 2 else None  # sometimes mid-step
            controller.save(directory)
            controller = factory()
            controller.restore(directory)
            if pending is not None:
                again = controller.ask(obs)
                assert again.plan == pending.plan and again.info == pending.info
                controller.tell(again, env.step(again))
                decisions.append(again)
                continue
        d = controller.ask(obs)
        controller.tell(d, env.step(d))
        decisions.append(d)
    return controller, decisions


def test_resumed_run_ends_with_the_same_population(tmp_path):
    obs = make_observation()

    def factory():
        return BETController(
            sparsity=(0.8, 0.9), search_iterations=7, num_candidates=10, top_k=3, seed=11
        )

    a, da = _run(factory(), obs)
    b, db = _run(factory(), obs, save_at=(2, 5, 9, 12), directory=tmp_path, factory=factory)
    assert [d.plan for d in da] == [d.plan for d in db]
    for c in (0.8, 0.9):
        assert a.archive(c) == b.archive(c)
        assert a.best_plan(c) == b.best_plan(c)
        for x, y in zip(a.surrogate(c).get_weights(), b.surrogate(c).get_weights(), strict=True):
            np.testing.assert_array_equal(x, y)
    assert a.get_state()["controller"] == b.get_state()["controller"]


def test_set_state_alone_cannot_stand_in_for_restore():
    obs = make_observation()
    a = small_bet()
    drive(a, FakeEnvironment(obs), steps=2)
    b = small_bet()
    b.set_state(a.get_state())  # JSON only: no archive, no surrogate weights
    with pytest.raises(RuntimeError, match="inconsistent.*restore"):
        b.ask(obs)


def test_bet_beats_es_and_mr_when_popular_entities_need_larger_sizes():
    obs = make_observation(num_users=150, num_items=250, d_max=64)
    env = FakeEnvironment(obs)
    for c in (0.9, 0.95):
        bet = BETController(sparsity=c, search_iterations=10, num_candidates=30, top_k=3, seed=0)
        drive(bet, env)
        ours = env.fitness(bet.best_plan())
        es = env.fitness(ES(sparsity=c).plans(obs)[c])
        mr = env.fitness(MR(sparsity=c, seed=0).plans(obs)[c])
        assert ours > es + 0.02 and ours > mr + 0.02, (c, ours, es, mr)


def test_failed_step_is_not_archived():
    obs = make_observation()
    controller = small_bet()
    steps = drive(controller, FakeEnvironment(obs, fail_at=(1,)))
    assert not steps[1][1].ok
    archive = controller.archive()
    assert len(archive) == SMALL["search_iterations"] - 1
    assert 1 not in archive.iterations.tolist()


def test_metrics_and_tensorboard_scalars(tmp_path):
    obs = make_observation()
    controller = small_bet()
    ((decision, feedback),) = drive(controller, FakeEnvironment(obs), steps=1)
    metrics = controller.metrics()
    assert set(metrics) == {
        f"0.9/{k}"
        for k in (
            "fitness", "predicted_fitness", "prediction_error", "surrogate_loss",
            "surrogate_learning_rate", "params", "best_fitness",
        )
    }  # fmt: skip
    assert metrics["0.9/fitness"] == pytest.approx(feedback.quality_ratio)
    assert metrics["0.9/params"] == decision.plan.total_params()
    assert metrics["0.9/predicted_fitness"] == pytest.approx(decision.info["predicted_fitness"])
    writer = tf.summary.create_file_writer(str(tmp_path))
    controller.log(step=0, writer=writer)
    writer.flush()
    tags = set()
    for path in glob.glob(str(tmp_path / "events.*")):
        for event in tf.compat.v1.train.summary_iterator(path):
            tags |= {v.tag for v in event.summary.value}
    assert "bet/0.9/fitness" in tags and "bet/0.9/surrogate_loss" in tags


def test_without_retraining_best_plan_is_the_best_archived_action():
    obs = make_observation()
    controller = small_bet(retrain=False)
    env = FakeEnvironment(obs)
    steps = drive(controller, env)
    assert len(steps) == SMALL["search_iterations"] and controller.done
    best = max(steps, key=lambda s: s[1].quality_ratio)[0]
    assert controller.best_plan() == best.plan
    top = controller.top_actions(3)
    assert [a.fitness for a in top] == sorted((a.fitness for a in top), reverse=True)
    assert top[0].plan == best.plan and top[0].retrain_fitness is None
    assert all(a.plan.fits(Budget(sparsity=0.9, d_max=obs.d_max)) for a in top)


def test_best_plan_after_retraining_is_chosen_by_retrain_fitness():
    obs = make_observation()
    controller = small_bet(search_iterations=5, top_k=3)
    env = FakeEnvironment(obs)
    steps = drive(controller, env)
    final = [(f.quality_ratio, d) for d, f in steps if d.phase == "final"]
    assert controller.best_plan() == max(final, key=lambda x: x[0])[1].plan
    top = controller.top_actions()
    assert [a.retrain_fitness for a in top] == [f for f, _ in final]
    assert [a.retrain_value for a in top] == [pytest.approx(0.3 * f) for f, _ in final]


class MonitorEnvironment(FakeEnvironment):
    """Final steps report a chosen validation Recall@20 per retraining, unlike their quality."""

    def __init__(self, observation, recalls):
        super().__init__(observation)
        self.recalls = list(recalls)

    def step(self, decision):
        fb = super().step(decision)
        if decision.phase != "final":
            return fb
        return fb.replace(metrics={"recall@20": self.recalls.pop(0), "ndcg@20": 0.5})


@pytest.mark.parametrize(
    "recalls,winner",
    [((0.20, 0.30, 0.10), 1), ((0.25, 0.25, 0.10), 0), ((0.10, 0.25, 0.25), 1)],
    ids=["highest-recall", "tie-to-first", "tie-to-better-rank"],
)
def test_retrained_winner_is_the_monitor_value_ties_to_the_better_search_rank(recalls, winner):
    """The rule of `tfembsize.search.selection.choose_winner`, as in the paper protocol."""
    obs = make_observation()
    controller = small_bet(search_iterations=5, top_k=3)
    steps = drive(controller, MonitorEnvironment(obs, recalls))
    final = [d for d, _ in steps if d.phase == "final"]
    assert [d.info["retrain_rank"] for d in final] == [0, 1, 2]
    assert controller.best_plan() == final[winner].plan
    assert [a.retrain_value for a in controller.top_actions()] == list(recalls)
    by_ndcg = small_bet(search_iterations=5, top_k=3, monitor="ndcg@20")
    assert by_ndcg.get_config()["monitor"] == "ndcg@20"
    assert "monitor" not in controller.get_config()  # the default: old saved states restore
    drive(by_ndcg, MonitorEnvironment(obs, recalls))
    assert by_ndcg.best_plan() == final[0].plan  # all ndcg@20 tie: the best search rank


def test_a_monitor_the_feedback_lacks_is_a_clear_error():
    obs = make_observation()
    controller = small_bet(search_iterations=2, top_k=1, monitor="recall@50")
    with pytest.raises(ValueError, match=r"has no 'recall@50'; it has \['recall@20'\]"):
        drive(controller, FakeEnvironment(obs))
    with pytest.raises(ValueError, match="`monitor` must be 'quality' or a metric"):
        small_bet(monitor="best")


def test_candidates_are_the_archive_and_top_actions_their_shortlist():
    from tfembsize.search.selection import shortlist

    obs = make_observation()
    controller = small_bet(retrain=False, search_iterations=6)
    drive(controller, FakeEnvironment(obs))
    cands = controller.candidates()
    archive = controller.archive()
    assert [c.score for c in cands] == list(archive.fitness)
    assert [c.info["iteration"] for c in cands] == list(archive.iterations)
    short = shortlist(cands, 3, Budget(sparsity=0.9, d_max=obs.d_max))
    top = controller.top_actions(3)
    assert [a.plan for a in top] == short.plans
    assert [a.iteration for a in top] == [e.candidate.info["iteration"] for e in short.entries]


@pytest.mark.parametrize(
    "options",
    [
        {"surrogate_features": "constant"},
        {"strategy_cycle": ("random",)},
        {"split": "uniform"},
        {"per_action_distribution": False},
    ],
    ids=["sizes-only-surrogate", "random-selection", "uniform-split", "per-iteration-draws"],
)
def test_ablation_variants_keep_the_budget(options):
    obs = make_observation()
    controller = small_bet((0.8, 0.95), **options)
    for decision, _ in drive(controller, FakeEnvironment(obs)):
        decision.plan.check(decision.budget)


def test_bad_configuration():
    with pytest.raises(ValueError, match=r"`strategy_cycle` must be a non-empty sequence"):
        BETController(strategy_cycle=("greedy",))
    with pytest.raises(ValueError, match="`search_iterations` must be a positive integer"):
        BETController(search_iterations=0)
    with pytest.raises(ValueError, match="`split` must be one of"):
        BETController(split="half")
    with pytest.raises(ValueError, match="`finetune_epochs` must be a positive number"):
        BETController(finetune_epochs=0)
    with pytest.raises(ValueError, match="`surrogate_features` must be one of"):
        BETController(surrogate_features="ids")
    with pytest.raises(RuntimeError, match="built at the first ask"):
        BETController().surrogate()


def test_runs_under_the_search_loop_and_resumes(tmp_path):
    from tfembsize.search import run

    obs = make_observation()

    class LoopEnv:
        """The environment protocol of tfembsize.search (no training: a known fitness)."""

        def __init__(self):
            self.fake = FakeEnvironment(obs)
            self.calls = []

        def observation(self):
            return obs

        def step(self, plan, mode="scratch", **kwargs):
            self.calls.append((mode, kwargs))
            r = self.fake.fitness(plan)
            return Feedback(
                quality=0.2 * r,
                quality_ratio=r,
                metrics={"recall@20": 0.3 * r},
                usable_params=plan.total_params(),
            )

        def snapshot(self):
            pass

        def restore(self):
            pass

    def make():
        return small_bet((0.8, 0.9), seed=5)

    whole = run(make(), LoopEnv(), tmp_path / "whole", verbose=0, tensorboard=False)
    assert whole.finished and len(whole.history) == 12
    part = run(make(), LoopEnv(), tmp_path / "part", iterations=5, verbose=0, tensorboard=False)
    assert len(part.history) == 5
    rest = run(make(), LoopEnv(), tmp_path / "part", verbose=0, tensorboard=False)
    assert rest.finished
    assert [r.plan for r in rest.history] == [r.plan for r in whole.history]
    for c in (0.8, 0.9):
        assert rest.per_sparsity[c].plan.fits(Budget(sparsity=c, d_max=obs.d_max))


def test_the_archive_is_appended_to_disk_not_rewritten(tmp_path):
    obs = make_observation()
    bet = small_bet(0.9)
    env = FakeEnvironment(obs)
    logs = tmp_path / "logs"
    for i in range(3):
        drive(bet, env, steps=1)
        bet.save(tmp_path / f"ckpt{i}", logs_directory=logs)
    chunks = sorted(os.listdir(logs / "archive_0"))
    assert chunks == [f"{i:012d}-{i + 1:012d}.npz" for i in range(3)]  # one new action per save
    restored = small_bet(0.9)
    restored.restore(tmp_path / "ckpt1")
    assert restored.archive().fitness.tolist() == bet.archive().fitness[:2].tolist()
    restored.restore(tmp_path / "ckpt2")
    np.testing.assert_array_equal(restored.archive().counts, bet.archive().counts)


def test_search_start_scratch_asks_fresh_trainings_of_h_epochs():
    obs = make_observation()
    full = small_bet(search_iterations=3, top_k=1)
    scratch = small_bet(search_iterations=3, top_k=1, search_start="scratch")
    full_steps = drive(full, FakeEnvironment(obs))
    scratch_steps = drive(scratch, FakeEnvironment(obs))
    search = [d for d, _ in scratch_steps if d.phase == "search"]
    assert [d.mode for d in search] == ["scratch"] * 3
    assert [d.mode for d, _ in full_steps if d.phase == "search"] == ["snapshot"] * 3
    assert {d.train_epochs for d in search} == {scratch.finetune_epochs}
    # Only where the training starts differs: the same seed draws the same actions.
    assert [d.plan for d in search] == [d.plan for d, _ in full_steps if d.phase == "search"]
    assert scratch.get_config()["search_start"] == "scratch"
    assert "search_start" not in full.get_config()  # the default: old saved states restore
    assert BETController.from_config(scratch.get_config()).search_start == "scratch"
    with pytest.raises(ValueError, match=r"`search_start` must be one of .*search_start='warm'"):
        small_bet(search_start="warm")
