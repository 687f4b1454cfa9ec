"""CIESS: per-entity sizes from two TD3 agents with random-walk exploration."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from tfembsize._checks import positive_float, positive_int
from tfembsize._io import AppendOnlyArrays
from tfembsize.controllers._common import generator_state, set_generator_state
from tfembsize.controllers.base import Controller, Decision
from tfembsize.controllers.ciess_archive import (
    CIESSArchive,
    archive_fields,
    archive_view,
    archived_candidates,
)
from tfembsize.controllers.ciess_policy import (
    DEFAULT_NOISE_STD,
    NOISE_DISTRIBUTIONS,
    REWARD_QUALITIES,
    WALK_WEIGHTINGS,
    ExplorationNoise,
    popularity_feature,
    random_walk,
    reward,
    state_features,
)
from tfembsize.plan import SizePlan
from tfembsize.rl import ReplayBuffer, TD3Agent
from tfembsize.search.selection import (
    ENTITY_RATIO,
    Candidate,
    Shortlist,
    choose_winner,
    selection_value,
    shortlist,
)

__all__ = ["CIESSController", "CIESSArchive", "NOISE_PLACEMENTS", "NOISE_DISTRIBUTIONS"]

logger = logging.getLogger(__name__)

NOISE_PLACEMENTS = ("shared", "per_entity")
"""Exploration noise: ``"shared"`` (one Gaussian draw per iteration added to every chosen size,
after the walk, as the CIESS authors' code) or ``"per_entity"`` (one draw per entity added to
the actor's size before the walk, as the paper)."""

_SIDES = ("user", "item")
_DEFAULT_WEIGHT = {"ratio": 0.4, "raw": 0.01}
_CRITIC_CHUNK = 65_536  # rows of (state, candidate) scored by the critic at once


class CIESSController(Controller):
    """CIESS: continuous per-entity size search with TD3 and random-walk exploration.

    Every user and every item has a size in ``[1, d_max]``. Two TD3 agents (`TD3Agent`), one
    for users and one for items, map an entity's state (its popularity, its current size and
    its current quality ratio q_n to the full-size model, each scaled to [-1, 1]) to a size.
    An iteration chooses a size for every entity: the actor's size, a random walk of
    ``walk_length`` hops of at most ``walk_radius`` around it, the candidate the online
    critic scores highest, plus Gaussian exploration noise (one draw per iteration shared by
    every entity, or one per entity before the walk). The environment trains a freshly
    initialised recommender with these sizes for a short, fixed length and evaluates it on
    validation (``mode="scratch"``). Each entity's reward is ``q_n - lambda (d_n / d_max)^2``
    and one transition per entity enters its side's replay buffer; each agent then makes
    ``updates_per_iteration`` TD3 updates on batches of ``batch_size``. Episodes of
    ``iterations`` steps start from full size and full quality; ``episodes`` of them make
    the search. Search steps are exploration and are **not** budgeted.

    Every evaluated mask is archived. One search serves every target sparsity c: its
    candidates are all archived masks within ``B(c) = floor((1 - c) d_max N)`` (every table
    counted), ranked by their mean quality ratio over users and items; the top ``top_k``
    distinct ones are retrained from scratch (``phase="final"`` decisions, each asserted
    within B(c)) and the winner is the best by the validation ``monitor`` (by default the
    mean per-entity quality ratio). A target that no archived mask meets is missed
    (`missed_targets`; `best_plan` returns None); its budget is never relaxed.

    Args:
        sparsity: target sparsity c, or a sequence of them (one search serves all).
        episodes: M, episodes (30).
        iterations: T, iterations per episode (10).
        train_epochs: training length of one search iteration in passes over the training
            interactions (5, as the paper).
        train_steps: the same in optimiser steps (overrides ``train_epochs``; the authors'
            code trains 1,500 to 5,000 steps per iteration, the environment's recipe
            decides the batch size).
        reward_weight: lambda, the weight of the memory cost (None: 0.4 with
            ``reward_quality="ratio"``, 0.01 with ``"raw"``).
        reward_quality: ``"ratio"`` (q_n, the paper) or ``"raw"`` (Q_n with a ``d_n - 1``
            memory term, the authors' code).
        walk_length: L, hops of the random walk (0 turns the walk off).
        walk_radius: t, the largest size change of one hop.
        walk_weighting: ``"inverse"`` (hop weights proportional to 1/|change|, the authors'
            code) or ``"distance"`` (proportional to |change|, the paper).
        noise: ``"shared"`` or ``"per_entity"`` (see `NOISE_PLACEMENTS`).
        noise_std: standard deviation of one exploration draw in size units (Gaussian and
            uniform), or the sigma of the Ornstein-Uhlenbeck process (None: 6 for Gaussian,
            11 / sqrt(3) for uniform, i.e. U(-11, 11), and 40 for OU, the CIESS paper's).
        noise_distribution: ``"gaussian"``, ``"uniform"`` or ``"ou"`` (see
            `NOISE_DISTRIBUTIONS`).
        batch_size: TD3 minibatch, drawn uniformly with replacement (4096).
        updates_per_iteration: G, TD3 updates per agent after each iteration (1).
        buffer_per_entity: replay capacity per entity of the side (100).
        hidden: hidden widths of the actors and critics ((256, 256)).
        actor_learning_rate: Adam rate of the actors (1e-3).
        critic_learning_rate: Adam rate of the critics (3e-3).
        gamma: discount (0.99).
        tau: Polyak factor of the target networks (0.005).
        policy_delay: critic updates per actor update (2).
        target_noise: sigma of the target-policy smoothing noise, in size units (2).
        noise_clip: clip of the smoothing noise (5).
        clip_norm: clip gradients by this global norm (None: off).
        top_k: l, archived masks retrained from scratch per target (3).
        retrain: ask for the selective retraining; with False the controller stops after the
            search and `best_plan` is the best archived mask within the budget.
        monitor: the validation number the retrained masks are chosen by: ``"entity_ratio"``
            (the mean per-entity quality ratio, the paper's rule), ``"quality"`` or a metric
            such as ``"recall@20"``.
        seed: seed of the networks, the walks, the noise and the replay sampling.

    Example:
        >>> from tfembsize.search import Observation
        >>> obs = Observation({"user_embedding": "user", "item_embedding": "item"},
        ...                   user_frequencies=[5, 3, 1, 0], item_frequencies=[4, 2, 2, 1, 0],
        ...                   d_max=8)
        >>> ciess = CIESSController(0.5, episodes=1, iterations=2, hidden=(8, 8), seed=0)
        >>> decision = ciess.ask(obs)
        >>> decision.mode, decision.phase, decision.budget is None
        ('scratch', 'search', True)

        With an environment that has a full-size reference, `tfembsize.search.run(
        CIESSController(sparsity=(0.8, 0.9, 0.95)), env, "runs/ciess")` runs the search and
        the retraining, resumably after every iteration.

    References:
        Qu et al., "Continuous Input Embedding Size Search For Recommender Systems",
        SIGIR 2023.
    """

    name = "ciess"
    budgeted_decisions = False

    def __init__(
        self,
        sparsity: float | Sequence[float] = (0.8, 0.9, 0.95),
        *,
        episodes: int = 30,
        iterations: int = 10,
        train_epochs: float = 5.0,
        train_steps: int | None = None,
        reward_weight: float | None = None,
        reward_quality: str = "ratio",
        walk_length: int = 5,
        walk_radius: int = 5,
        walk_weighting: str = "inverse",
        noise: str = "shared",
        noise_std: float | None = None,
        noise_distribution: str = "gaussian",
        batch_size: int = 4096,
        updates_per_iteration: int = 1,
        buffer_per_entity: int = 100,
        hidden: Sequence[int] = (256, 256),
        actor_learning_rate: float = 1e-3,
        critic_learning_rate: float = 3e-3,
        gamma: float = 0.99,
        tau: float = 0.005,
        policy_delay: int = 2,
        target_noise: float = 2.0,
        noise_clip: float = 5.0,
        clip_norm: float | None = None,
        top_k: int = 3,
        retrain: bool = True,
        monitor: str = ENTITY_RATIO,
        seed: int | None = None,
    ) -> None:
        super().__init__(sparsity, seed=seed)
        self.episodes = positive_int("episodes", episodes)
        self.iterations = positive_int("iterations", iterations)
        self.train_epochs = positive_float("train_epochs", train_epochs)
        self.train_steps = None if train_steps is None else positive_int("train_steps", train_steps)
        if reward_quality not in REWARD_QUALITIES:
            raise ValueError(
                f"`reward_quality` must be one of {REWARD_QUALITIES}. Received: "
                f"reward_quality={reward_quality!r}"
            )
        self.reward_quality = reward_quality
        self.reward_weight = (
            _DEFAULT_WEIGHT[reward_quality]
            if reward_weight is None
            else positive_float("reward_weight", reward_weight, allow_zero=True)
        )
        self.walk_length = positive_int("walk_length", walk_length, minimum=0)
        self.walk_radius = positive_int("walk_radius", walk_radius)
        if walk_weighting not in WALK_WEIGHTINGS:
            raise ValueError(
                f"`walk_weighting` must be one of {WALK_WEIGHTINGS}. Received: "
                f"walk_weighting={walk_weighting!r}"
            )
        self.walk_weighting = walk_weighting
        if noise not in NOISE_PLACEMENTS:
            raise ValueError(f"`noise` must be one of {NOISE_PLACEMENTS}. Received: {noise!r}")
        self.noise = noise
        if noise_distribution not in NOISE_DISTRIBUTIONS:
            raise ValueError(
                f"`noise_distribution` must be one of {NOISE_DISTRIBUTIONS}. Received: "
                f"noise_distribution={noise_distribution!r}"
            )
        if noise_distribution == "ou" and noise == "per_entity":
            raise ValueError(
                "An Ornstein-Uhlenbeck noise is one process stepped per iteration: use "
                "noise='shared' with noise_distribution='ou'. Received: noise='per_entity'"
            )
        self.noise_distribution = noise_distribution
        self.noise_std = (
            DEFAULT_NOISE_STD[noise_distribution]
            if noise_std is None
            else positive_float("noise_std", noise_std, allow_zero=True)
        )
        self.batch_size = positive_int("batch_size", batch_size)
        self.updates_per_iteration = positive_int("updates_per_iteration", updates_per_iteration)
        self.buffer_per_entity = positive_int("buffer_per_entity", buffer_per_entity)
        self.hidden = tuple(positive_int("hidden", h) for h in hidden)
        if not self.hidden:
            raise ValueError(f"`hidden` must name at least one layer width. Received: {hidden!r}")
        self.actor_learning_rate = positive_float("actor_learning_rate", actor_learning_rate)
        self.critic_learning_rate = positive_float("critic_learning_rate", critic_learning_rate)
        self.gamma = float(gamma)
        self.tau = float(tau)
        self.policy_delay = positive_int("policy_delay", policy_delay)
        self.target_noise = positive_float("target_noise", target_noise, allow_zero=True)
        self.noise_clip = positive_float("noise_clip", noise_clip, allow_zero=True)
        self.clip_norm = None if clip_norm is None else positive_float("clip_norm", clip_norm)
        self.top_k = positive_int("top_k", top_k)
        self.retrain = bool(retrain)
        if not isinstance(monitor, str) or not (
            monitor in ("quality", ENTITY_RATIO) or "@" in monitor
        ):
            raise ValueError(
                "`monitor` must be 'entity_ratio', 'quality' or a metric such as "
                f"'recall@20'. Received: monitor={monitor!r}"
            )
        self.monitor = monitor
        # Run state (the JSON part is `_get_state`; arrays, logs and networks are saved apart).
        self._gen = self.child_rng(1)
        self._steps = 0  # search iterations told (failed ones included)
        self._failed = 0
        self._retrain_values: dict[float, list[float | None]] = {c: [] for c in self.sparsities}
        self._digest: str | None = None
        self._agents: dict[str, TD3Agent] = {}
        self._buffers: dict[str, ReplayBuffer] = {}
        self._archive: AppendOnlyArrays | None = None
        self._popularity: dict[str, np.ndarray] = {}
        self._sizes: dict[str, np.ndarray] = {}  # current sizes (within the episode)
        self._ratios: dict[str, np.ndarray] = {}  # current quality ratios
        self._chosen: dict[str, Any] | None = None
        self._noise = ExplorationNoise(self.noise_distribution, self.noise_std)
        self._expected_rows: dict[str, int] | None = None  # buffer/archive rows of the state

    def get_config(self) -> dict:
        """The constructor arguments."""
        return {
            **super().get_config(),
            "episodes": self.episodes,
            "iterations": self.iterations,
            "train_epochs": self.train_epochs,
            "train_steps": self.train_steps,
            "reward_weight": self.reward_weight,
            "reward_quality": self.reward_quality,
            "walk_length": self.walk_length,
            "walk_radius": self.walk_radius,
            "walk_weighting": self.walk_weighting,
            "noise": self.noise,
            "noise_std": self.noise_std,
            # Listed only when not the default, so states saved before it existed restore.
            **(
                {"noise_distribution": self.noise_distribution}
                if self.noise_distribution != "gaussian"
                else {}
            ),
            "batch_size": self.batch_size,
            "updates_per_iteration": self.updates_per_iteration,
            "buffer_per_entity": self.buffer_per_entity,
            "hidden": list(self.hidden),
            "actor_learning_rate": self.actor_learning_rate,
            "critic_learning_rate": self.critic_learning_rate,
            "gamma": self.gamma,
            "tau": self.tau,
            "policy_delay": self.policy_delay,
            "target_noise": self.target_noise,
            "noise_clip": self.noise_clip,
            "clip_norm": self.clip_norm,
            "top_k": self.top_k,
            "retrain": self.retrain,
            "monitor": self.monitor,
        }

    # Problem-dependent parts -----------------------------------------------------------------
    def _on_problem(self) -> None:
        p = self._known_problem()
        if p.user_frequencies is None or p.item_frequencies is None:
            raise RuntimeError("CIESSController needs the problem's entity frequencies.")
        if self._digest == p.digest:
            return
        counts = {"user": p.num_users, "item": p.num_items}
        freqs = {"user": p.user_frequencies, "item": p.item_frequencies}
        for k, side in enumerate(_SIDES):
            seed = int(np.random.SeedSequence(self._entropy, spawn_key=(4, k)).generate_state(1)[0])
            self._agents[side] = TD3Agent(
                3,
                1.0,
                float(p.d_max),
                hidden=self.hidden,
                actor_learning_rate=self.actor_learning_rate,
                critic_learning_rate=self.critic_learning_rate,
                gamma=self.gamma,
                tau=self.tau,
                policy_delay=self.policy_delay,
                target_noise=self.target_noise,
                noise_clip=self.noise_clip,
                clip_norm=self.clip_norm,
                seed=seed % 1_000_000,
            )
            self._buffers[side] = ReplayBuffer(3, 1, self.buffer_per_entity * max(counts[side], 1))
            self._popularity[side] = popularity_feature(freqs[side])
            self._sizes[side] = np.full(counts[side], p.d_max, np.int32)
            self._ratios[side] = np.ones(counts[side], np.float32)
        self._archive = AppendOnlyArrays(archive_fields(p.num_users, p.num_items, p.d_max))
        self._digest = p.digest

    def agent(self, side: str) -> TD3Agent:
        """The TD3 agent of ``side`` (``"user"`` or ``"item"``), after the first ask or restore."""
        if side not in _SIDES:
            raise ValueError(f"`side` must be 'user' or 'item'. Received: side={side!r}")
        if side not in self._agents:
            raise RuntimeError("The agents are built at the first ask (or by restore).")
        return self._agents[side]

    def replay_buffer(self, side: str) -> ReplayBuffer:
        """The replay buffer of ``side``, after the first ask or restore."""
        self.agent(side)  # the same checks
        return self._buffers[side]

    # Progress --------------------------------------------------------------------------------
    @property
    def search_steps(self) -> int:
        """M x T, the iterations of the search phase."""
        return self.episodes * self.iterations

    def _retrain_count(self, c: float) -> int:
        return len(self._shortlist(c, self.top_k)) if self.retrain else 0

    def _active_retraining(self) -> float | None:
        for c in self.sparsities:
            if len(self._retrain_values[c]) < self._retrain_count(c):
                return c
        return None

    def _is_done(self) -> bool:
        if self._steps < self.search_steps:
            return False
        if not self.retrain:
            return True
        return self._archive is not None and self._active_retraining() is None

    def _total_steps(self) -> int:
        return self.search_steps + (self.top_k * len(self.sparsities) if self.retrain else 0)

    def _position(self) -> tuple[int, int]:
        """(episode, iteration within the episode) of the next search step."""
        return divmod(self._steps, self.iterations)

    # Ask / tell ------------------------------------------------------------------------------
    def _check_consistent(self) -> None:
        if self._expected_rows is None or self._archive is None:
            return
        live = {s: self._buffers[s].num_pushed for s in _SIDES}
        live["archive"] = len(self._archive)
        if live != self._expected_rows:
            raise RuntimeError(
                f"CIESSController state is inconsistent (buffers and archive hold {live}, the "
                f"state expects {self._expected_rows}); restore full state with "
                "restore(directory), not set_state alone."
            )

    def _ask(self, observation: Any) -> Decision:
        self._check_consistent()
        if self._steps < self.search_steps:
            if self._steps == 0 and observation.reference is None:
                logger.warning(
                    "The observation has no full-size reference: CIESS needs per-entity quality "
                    "ratios in every feedback (an environment with a full-size reference model, "
                    "e.g. KerasEnvironment(reference=True))."
                )
            return self._ask_search()
        c = self._active_retraining()
        if c is None:
            raise RuntimeError("CIESSController is done; there is nothing more to ask.")
        short = self._shortlist(c, self.top_k)
        j = len(self._retrain_values[c])
        entry = short.entries[j]
        self._chosen = {"kind": "retrain", "sparsity": c}
        return Decision(
            plan=entry.plan,
            mode="scratch",
            budget=self._known_problem().budget(c),
            phase="final",
            info={
                "method": self.name,
                "sparsity": c,
                "retrain_rank": j,
                "archive_index": int(entry.candidate.info["archive_index"]),
                "search_score": entry.candidate.score,
            },
        )

    def _choose(self, side: str, states: np.ndarray, shared_eps: float | None) -> np.ndarray:
        """Sizes for one side: actor, (per-entity noise,) walk, critic argmax, (shared noise)."""
        agent, d_max = self._agents[side], self._known_problem().d_max
        proposal = agent.act(states).astype(np.float64)
        if self.noise == "per_entity":
            proposal = proposal + self._noise.draw(proposal.size, self._gen)
        start = np.clip(np.rint(proposal), 1, d_max).astype(np.int64)
        walk = random_walk(
            start,
            length=self.walk_length,
            radius=self.walk_radius,
            d_max=d_max,
            weighting=self.walk_weighting,
            rng=self._gen,
        )
        width = walk.shape[1]
        if width > 1:
            flat_states = np.repeat(states, width, axis=0)
            flat = walk.reshape(-1).astype(np.float32)
            q = np.concatenate(
                [
                    agent.q1(flat_states[i : i + _CRITIC_CHUNK], flat[i : i + _CRITIC_CHUNK])
                    for i in range(0, flat.size, _CRITIC_CHUNK)
                ]
            ).reshape(-1, width)
            best = walk[np.arange(walk.shape[0]), np.argmax(q, axis=1)].astype(np.int64)
        else:
            best = walk[:, 0].astype(np.int64)
        if shared_eps is not None:
            best = np.clip(np.rint(best + shared_eps), 1, d_max).astype(np.int64)
        return best.astype(np.int32)

    def _ask_search(self) -> Decision:
        p = self._known_problem()
        episode, it = self._position()
        states, sizes = {}, {}
        shared = None
        if self.noise == "shared":
            if it == 0:  # an Ornstein-Uhlenbeck process restarts with every episode
                self._noise.reset()
            shared = self._noise.step(self._gen)
        for side in _SIDES:
            if it == 0:  # an episode starts from full size and full quality
                current = np.full_like(self._sizes[side], p.d_max), np.ones_like(self._ratios[side])
            else:
                current = self._sizes[side], self._ratios[side]
            states[side] = state_features(self._popularity[side], *current, p.d_max)
            sizes[side] = self._choose(side, states[side], shared)
        plan = p.plan_from_sizes(sizes["user"], sizes["item"])
        params = plan.total_params()
        self._chosen = {"kind": "search", "states": states, "sizes": sizes, "params": params}
        length = (
            {"train_steps": self.train_steps}
            if self.train_steps is not None
            else {"train_epochs": self.train_epochs}
        )
        return Decision(
            plan=plan,
            mode="scratch",
            budget=None,
            phase="search",
            info={
                "method": self.name,
                "episode": episode,
                "iteration": it,
                "density": params / p.full_params,
                "noise": shared,
                "mean_user_size": float(sizes["user"].mean()) if sizes["user"].size else 0.0,
                "mean_item_size": float(sizes["item"].mean()) if sizes["item"].size else 0.0,
            },
            **length,
        )

    def _tell(self, decision: Decision, feedback: Any) -> None:
        chosen, self._chosen = self._chosen, None
        if chosen is None:
            raise RuntimeError("CIESSController lost its pending decision; ask again.")
        if chosen["kind"] == "retrain":
            c = chosen["sparsity"]
            value = selection_value(feedback, self.monitor) if feedback.ok else None
            self._retrain_values[c].append(value)
            if value is not None:
                self._metrics = {f"{c:g}/retrain_value": value}
            return
        episode, it = self._position()
        ratios = {"user": feedback.user_quality_ratio, "item": feedback.item_quality_ratio}
        if feedback.ok and (ratios["user"] is None or ratios["item"] is None):
            raise ValueError(
                "CIESS needs per-entity quality ratios in every feedback (user_quality_ratio "
                "and item_quality_ratio, relative to a full-size reference model); this "
                "feedback has none. Use an environment with a reference (KerasEnvironment "
                "with reference=True)."
            )
        self._steps += 1
        if not feedback.ok:
            self._failed += 1
            self._metrics = {"failed_steps": float(self._failed)}
            return
        raw = {"user": feedback.user_quality, "item": feedback.item_quality}
        p = self._known_problem()
        metrics: dict[str, float] = {}
        rewards = {}
        for side in _SIDES:
            sizes = chosen["sizes"][side]
            quality = ratios[side] if self.reward_quality == "ratio" else raw[side]
            r = reward(
                quality,
                sizes,
                d_max=p.d_max,
                weight=self.reward_weight,
                quality_kind=self.reward_quality,
            )
            next_states = state_features(self._popularity[side], sizes, ratios[side], p.d_max)
            self._buffers[side].push(chosen["states"][side], sizes, r, next_states)
            self._sizes[side] = sizes.astype(np.int32)
            self._ratios[side] = np.asarray(ratios[side], np.float32)
            rewards[side] = float(r.mean()) if r.size else 0.0
            metrics[f"{side}/reward"] = rewards[side]
            metrics[f"{side}/size"] = float(sizes.mean()) if sizes.size else 0.0
            for _ in range(self.updates_per_iteration):
                batch = self._buffers[side].sample(self.batch_size, self._gen)
                info = self._agents[side].update(batch)
            metrics[f"{side}/critic_loss"] = info.critic_loss
            metrics[f"{side}/q1"] = info.q1_mean
            if info.actor_loss is not None:
                metrics[f"{side}/actor_loss"] = info.actor_loss
        mean_ratio = feedback.mean_entity_ratio()
        assert self._archive is not None
        self._archive.append(
            user_sizes=chosen["sizes"]["user"][None],
            item_sizes=chosen["sizes"]["item"][None],
            params=[chosen["params"]],
            mean_ratio=[mean_ratio],
            quality=[feedback.quality],
            user_reward=[rewards["user"]],
            item_reward=[rewards["item"]],
            episode=[episode],
            step=[self._steps - 1],
        )
        self._expected_rows = None
        metrics.update(
            density=chosen["params"] / p.full_params,
            mean_ratio=float(mean_ratio or 0.0),
            quality=float(feedback.quality),
            episode=float(episode),
        )
        self._metrics = metrics

    # Results ---------------------------------------------------------------------------------
    def archive(self) -> CIESSArchive:
        """Every mask evaluated so far (copies; empty before the first successful step)."""
        if self._archive is None:
            raise RuntimeError("The archive is built at the first ask (or by restore).")
        return archive_view(self._archive, self._known_problem().full_params)

    def candidates(self, sparsity: float, limit: int | None = None) -> list[Candidate]:
        """Archived masks within ``B(sparsity)``, best search score first, without duplicates.

        The score is the mask's mean per-entity quality ratio; ``info`` holds
        ``archive_index``, ``episode``, ``step``, ``density`` and ``quality``.

        Args:
            sparsity: a target sparsity of this controller.
            limit: keep at most this many (None: all).
        """
        c = self._check_sparsity(sparsity)
        if self._archive is None:
            return []
        return archived_candidates(self._archive, self._known_problem(), c, limit)

    def _shortlist(self, c: float, k: int, fill: bool = False) -> Shortlist:
        """The top ``k`` archived masks within B(c) (each asserted by `shortlist`)."""
        return shortlist(self.candidates(c, limit=k), k, self._known_problem().budget(c), fill=fill)

    def top_masks(self, sparsity: float, k: int | None = None, *, fill: bool = False) -> Shortlist:
        """The masks the selective retraining takes for ``sparsity`` (default ``top_k``).

        Args:
            sparsity: a target sparsity of this controller.
            k: how many (default ``top_k``).
            fill: scale each mask to spend the budget B(c) (`SizePlan.scaled_to`): the
                search ranks masks by quality alone, so at high sparsity the best ones can
                use a fraction of the budget. Not part of CIESS; the paper retrains the
                masks as archived (False).
        """
        k = self.top_k if k is None else positive_int("k", k)
        return self._shortlist(self._check_sparsity(sparsity), k, fill=bool(fill))

    def retrain_values(self, sparsity: float) -> list[float | None]:
        """The validation ``monitor`` values of the retrained masks, in search-rank order."""
        return list(self._retrain_values[self._check_sparsity(sparsity)])

    def missed_targets(self) -> list[float]:
        """Target sparsities that no archived mask meets (so far)."""
        if self._archive is None:
            return list(self.sparsities)
        return [c for c in self.sparsities if not self.candidates(c, limit=1)]

    def _best_plan(self, sparsity: float) -> SizePlan | None:
        if self._archive is None or len(self._archive) == 0:
            return None
        values = self._retrain_values[sparsity]
        short = self._shortlist(sparsity, max(1, len(values)))
        if short.missed:
            return None
        winner = choose_winner(values)
        return short.entries[0 if winner is None else winner].plan

    # State -----------------------------------------------------------------------------------
    def _get_state(self) -> dict:
        rows = None
        if self._archive is not None:
            rows = {s: self._buffers[s].num_pushed for s in _SIDES}
            rows["archive"] = len(self._archive)
        return {
            "steps": self._steps,
            "failed": self._failed,
            "retrain_values": {f"{c!r}": list(v) for c, v in self._retrain_values.items()},
            "rng": generator_state(self._gen),
            "rows": rows,
            "ou": self._noise.value,
        }

    def _set_state(self, state: Mapping[str, Any]) -> None:
        self._steps = int(state["steps"])
        self._failed = int(state["failed"])
        saved = state["retrain_values"]
        if sorted(saved) != sorted(f"{c!r}" for c in self.sparsities):
            raise ValueError("The saved CIESS state has different sparsities.")
        self._retrain_values = {
            c: [None if v is None else float(v) for v in saved[f"{c!r}"]] for c in self.sparsities
        }
        set_generator_state(self._gen, state["rng"])
        self._noise.value = float(state.get("ou", 0.0))
        self._expected_rows = None if state.get("rows") is None else dict(state["rows"])
        self._chosen = None

    def _get_arrays(self) -> dict[str, np.ndarray]:
        out: dict[str, np.ndarray] = {}
        for side in self._sizes:
            out[f"{side}_sizes"] = self._sizes[side]
            out[f"{side}_ratios"] = self._ratios[side]
        return out

    def _set_arrays(self, arrays: Mapping[str, np.ndarray]) -> None:
        for side in _SIDES:
            if f"{side}_sizes" in arrays:
                self._sizes[side] = np.asarray(arrays[f"{side}_sizes"], np.int32)
                self._ratios[side] = np.asarray(arrays[f"{side}_ratios"], np.float32)

    def _array_logs(self) -> dict[str, AppendOnlyArrays]:
        if self._archive is None:
            return {}
        return {
            "user_buffer": self._buffers["user"].log(),
            "item_buffer": self._buffers["item"].log(),
            "archive": self._archive,
        }

    def _trackables(self) -> dict[str, Any]:
        if not self._agents:
            return {}
        import tensorflow as tf

        return {f"{s}_agent": tf.train.Checkpoint(**self._agents[s].trackables()) for s in _SIDES}
