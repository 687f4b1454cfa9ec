"""BET: budgeted embedding tables by sampled whole-table actions and a DeepSets predictor."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from tfembsize._checks import positive_int
from tfembsize._io import AppendOnlyArrays
from tfembsize.controllers._common import generator_state, set_generator_state, sparsity_key
from tfembsize.controllers.base import Controller, Decision, fitness_of
from tfembsize.controllers.bet_archive import (
    _DEFAULT_CYCLE,
    _DEFAULT_MONITOR,
    STRATEGIES,
    Archive,
    ArchivedAction,
    _Search,
)
from tfembsize.controllers.bet_sampler import FAMILIES, SPLITS, BudgetedActionSampler
from tfembsize.plan import SizePlan
from tfembsize.search.selection import (
    Candidate,
    Shortlist,
    choose_winner,
    selection_value,
    shortlist,
)
from tfembsize.surrogates.deepsets import FEATURES, DeepSetsSurrogate, SortedSizes

__all__ = ["BETController", "ArchivedAction", "Archive", "SEARCH_STARTS", "STRATEGIES"]

logger = logging.getLogger(__name__)

SEARCH_STARTS = ("full", "scratch")
"""Where a BET search iteration's training starts: the pretrained full model, or scratch."""


class BETController(Controller):
    """BET: sample budgeted whole-table actions, pick one with a DeepSets predictor.

    Each iteration draws m candidate actions that meet the budget by construction
    (`BudgetedActionSampler`: a random user/item split of the budget, per-side share
    distributions from four families, sizes assigned by frequency rank, repaired and
    asserted), chooses one by the strategy of the iteration (t mod 5: surrogate argmax three
    times, uniformly random, then the candidate nearest to the best archived action in the
    surrogate's embedding space, re-embedded with the current predictor), and asks the
    environment to fine-tune the pretrained full model with it for h epochs, restored from
    the snapshot each time (``mode="snapshot"``). The fitness told back (the validation
    quality ratio to the full model, `Feedback.quality_ratio`) joins the archive, and the
    `DeepSetsSurrogate` makes N = 2 online updates. After T iterations the top K distinct
    actions within the budget (`tfembsize.search.selection.shortlist`) are retrained from
    scratch (``mode="scratch"``, ``phase="final"``); `best_plan` is the one with the highest
    validation ``monitor`` value, ties to the better search rank
    (`tfembsize.search.selection.choose_winner`, the rule of the paper protocol too).

    Several sparsities run one after another in one controller, each with its own budget,
    archive, surrogate and generator (derived from the seed and the sparsity, so a
    sparsity's search does not depend on which others run beside it).

    Args:
        sparsity: target sparsity c in (0, 1), or a sequence of them (e.g. (0.8, 0.9, 0.95)).
        search_iterations: T, search iterations per sparsity (50).
        num_candidates: m, candidates per iteration (100).
        finetune_epochs: h, fine-tuning epochs per iteration (10; 15 for NGCF, as the BET paper
            prescribes).
        finetune_steps: fine-tune for this many optimiser steps instead of h epochs.
        strategy_cycle: strategy of iteration t is ``strategy_cycle[t % len]``; names from
            `STRATEGIES`. ``("random",)`` is the random-selection ablation.
        top_k: K, actions retrained from scratch at the end (5).
        monitor: the validation number the retrained actions are chosen by: ``"quality"`` or
            a metric of the feedback such as ``"recall@20"`` (the default, the number early
            stopping selects on by default).
        retrain: whether to ask for the selective retraining (K ``"scratch"`` decisions per
            sparsity). With False the controller stops after the search and `best_plan` is
            the best archived action; `top_actions` gives the candidates to retrain yourself.
        split: budget split, ``"feasible"`` (this library's default, every entity can
            get size >= 1) or ``"uniform"`` (as the BET paper and code) (see
            `BudgetedActionSampler`).
        per_action_distribution: draw family and beta per action (True, as the BET
            authors' code) or once per iteration (False, as the BET paper).
        families: share distribution families to choose from.
        beta_max: override of beta_max per family.
        max_redraws: R, rejected draws before clipping to d_max (50).
        surrogate_updates: N, surrogate updates per iteration (2).
        surrogate_learning_rate: initial surrogate learning rate (0.01).
        surrogate_learning_rate_decay: factor per update (0.9).
        surrogate_min_learning_rate: floor (0.002).
        surrogate_features: ``"frequency"`` (paper) or ``"constant"`` (an ablation whose
            surrogate sees only the sizes).
        search_start: where each search iteration's training starts: ``"full"`` (the
            paper: fine-tune the pretrained full model, ``mode="snapshot"``) or
            ``"scratch"`` (train h epochs from a fresh initialisation, ``mode="scratch"``).
            Fine-tuning is cheaper; a short training from scratch scores an action the way
            its final retraining will use it.
        seed: seed of every draw and of the surrogate's initial weights.

    Example:
        >>> from tfembsize.search import Observation
        >>> obs = Observation({"user_embedding": "user", "item_embedding": "item"},
        ...                   user_frequencies=[5, 3, 1, 0], item_frequencies=[4, 2, 2, 1, 0],
        ...                   d_max=8)
        >>> bet = BETController(sparsity=0.5, search_iterations=2, num_candidates=4, seed=0)
        >>> decision = bet.ask(obs)
        >>> decision.mode, decision.train_epochs, decision.plan.fits(decision.budget)
        ('snapshot', 10.0, True)

        With an environment, `tfembsize.search.run(BETController(sparsity=(0.8, 0.9, 0.95)),
        env, "runs/bet")` runs the whole search and the retraining, resumably.

    References:
        Qu et al., "Budgeted Embedding Table For Recommender Systems", WSDM 2024.
    """

    name = "bet"

    def __init__(
        self,
        sparsity: float | Sequence[float] = 0.9,
        *,
        search_iterations: int = 50,
        num_candidates: int = 100,
        finetune_epochs: float = 10,
        finetune_steps: int | None = None,
        strategy_cycle: Sequence[str] = _DEFAULT_CYCLE,
        top_k: int = 5,
        monitor: str = _DEFAULT_MONITOR,
        retrain: bool = True,
        split: str = "feasible",
        per_action_distribution: bool = True,
        families: Sequence[str] = FAMILIES,
        beta_max: Mapping[str, float] | None = None,
        max_redraws: int = 50,
        surrogate_updates: int = 2,
        surrogate_learning_rate: float = 0.01,
        surrogate_learning_rate_decay: float = 0.9,
        surrogate_min_learning_rate: float = 0.002,
        surrogate_features: str = "frequency",
        search_start: str = "full",
        seed: int | None = None,
    ) -> None:
        super().__init__(sparsity, seed=seed)
        for arg, value in (
            ("search_iterations", search_iterations),
            ("num_candidates", num_candidates),
            ("top_k", top_k),
            ("surrogate_updates", surrogate_updates),
        ):
            positive_int(arg, value)
        if finetune_steps is not None and (
            isinstance(finetune_steps, bool)
            or not isinstance(finetune_steps, (int, np.integer))
            or finetune_steps < 1
        ):
            raise ValueError(
                f"`finetune_steps` must be a positive integer or None. Received: {finetune_steps!r}"
            )
        if isinstance(finetune_epochs, bool) or not (
            isinstance(finetune_epochs, (int, float)) and finetune_epochs > 0
        ):
            raise ValueError(
                f"`finetune_epochs` must be a positive number. Received: {finetune_epochs!r}"
            )
        cycle = tuple(strategy_cycle)
        if not cycle or any(s not in STRATEGIES for s in cycle):
            raise ValueError(
                f"`strategy_cycle` must be a non-empty sequence of {STRATEGIES}. Received: "
                f"strategy_cycle={strategy_cycle!r}"
            )
        if not isinstance(monitor, str) or not (monitor == "quality" or "@" in monitor):
            raise ValueError(
                "`monitor` must be 'quality' or a metric such as 'recall@20'. Received: "
                f"monitor={monitor!r}"
            )
        if split not in SPLITS:
            raise ValueError(f"`split` must be one of {SPLITS}. Received: split={split!r}")
        families = tuple(families)
        if not families or any(f not in FAMILIES for f in families):
            raise ValueError(f"`families` must be a subset of {FAMILIES}. Received {families!r}")
        if surrogate_features not in FEATURES:
            raise ValueError(
                f"`surrogate_features` must be one of {FEATURES}. Received: {surrogate_features!r}"
            )
        if search_start not in SEARCH_STARTS:
            raise ValueError(
                f"`search_start` must be one of {SEARCH_STARTS}. Received: "
                f"search_start={search_start!r}"
            )
        if isinstance(max_redraws, bool) or not isinstance(max_redraws, int) or max_redraws < 0:
            raise ValueError(f"`max_redraws` must be an integer >= 0. Received: {max_redraws!r}")
        self.search_iterations = int(search_iterations)
        self.num_candidates = int(num_candidates)
        self.finetune_epochs = float(finetune_epochs)
        self.finetune_steps = None if finetune_steps is None else int(finetune_steps)
        self.strategy_cycle = cycle
        self.top_k = int(top_k)
        self.monitor = monitor
        self.retrain = bool(retrain)
        self.split = split
        self.per_action_distribution = bool(per_action_distribution)
        self.families = families
        self.beta_max = None if beta_max is None else {k: float(v) for k, v in beta_max.items()}
        self.max_redraws = max_redraws
        self.surrogate_updates = int(surrogate_updates)
        self.surrogate_learning_rate = float(surrogate_learning_rate)
        self.surrogate_learning_rate_decay = float(surrogate_learning_rate_decay)
        self.surrogate_min_learning_rate = float(surrogate_min_learning_rate)
        self.surrogate_features = surrogate_features
        self.search_start = search_start
        self._searches = [
            _Search(c, self.child_rng(2, sparsity_key(c)), None) for c in self.sparsities
        ]
        self._samplers: list[BudgetedActionSampler] | None = None
        self._surrogates: list[DeepSetsSurrogate] | None = None
        self._surrogate_digest: str | None = None
        self._chosen: dict | None = None  # the pending action (in memory only)
        self._warned_no_ratio = False
        self._warned_no_monitor = False

    def get_config(self) -> dict:
        """The constructor arguments.

        ``monitor`` and ``search_start`` are listed only when they are not the default, so
        states saved before they existed still restore.
        """
        monitor = {} if self.monitor == _DEFAULT_MONITOR else {"monitor": self.monitor}
        if self.search_start != "full":
            monitor["search_start"] = self.search_start
        return {
            **super().get_config(),
            **monitor,
            "search_iterations": self.search_iterations,
            "num_candidates": self.num_candidates,
            "finetune_epochs": self.finetune_epochs,
            "finetune_steps": self.finetune_steps,
            "strategy_cycle": list(self.strategy_cycle),
            "top_k": self.top_k,
            "retrain": self.retrain,
            "split": self.split,
            "per_action_distribution": self.per_action_distribution,
            "families": list(self.families),
            "beta_max": self.beta_max,
            "max_redraws": self.max_redraws,
            "surrogate_updates": self.surrogate_updates,
            "surrogate_learning_rate": self.surrogate_learning_rate,
            "surrogate_learning_rate_decay": self.surrogate_learning_rate_decay,
            "surrogate_min_learning_rate": self.surrogate_min_learning_rate,
            "surrogate_features": self.surrogate_features,
        }

    # Problem-dependent parts -------------------------------------------------------------
    def _on_problem(self) -> None:
        p = self._known_problem()
        for search in self._searches:
            search.ensure_log(p.d_max)
        if p.user_frequencies is None or p.item_frequencies is None:
            raise RuntimeError("BETController needs the problem's entity frequencies.")
        freqs = (p.user_frequencies, p.item_frequencies)
        self._samplers = [
            BudgetedActionSampler(
                freqs,
                p.size_limit(c),
                p.d_max,
                split=self.split,
                per_action=self.per_action_distribution,
                families=self.families,
                beta_max=self.beta_max,
                max_redraws=self.max_redraws,
            )
            for c in self.sparsities
        ]
        if self._surrogates is None or self._surrogate_digest != p.digest:
            ranked = [f[o] for f, o in zip(freqs, self._samplers[0].orders, strict=True)]
            self._surrogates = [
                DeepSetsSurrogate(
                    ranked,
                    p.d_max,
                    learning_rate=self.surrogate_learning_rate,
                    learning_rate_decay=self.surrogate_learning_rate_decay,
                    min_learning_rate=self.surrogate_min_learning_rate,
                    features=self.surrogate_features,
                    seed=int(
                        np.random.SeedSequence(
                            self._entropy, spawn_key=(3, sparsity_key(c))
                        ).generate_state(1)[0]
                    ),
                    name=f"surrogate_{i}",
                )
                for i, c in enumerate(self.sparsities)
            ]
            self._surrogate_digest = p.digest

    def surrogate(self, sparsity: float | None = None) -> DeepSetsSurrogate:
        """The fitness predictor of ``sparsity``'s search (None-able only with one sparsity).

        Raises:
            RuntimeError: the problem is not known yet (no ask and no restore).
        """
        i = self._index(sparsity)
        if self._surrogates is None:
            raise RuntimeError("The surrogate is built at the first ask (or by restore).")
        return self._surrogates[i]

    def sampler(self, sparsity: float | None = None) -> BudgetedActionSampler:
        """The action sampler of ``sparsity`` (after the first ask or a restore)."""
        i = self._index(sparsity)
        if self._samplers is None:
            raise RuntimeError("The sampler is built at the first ask (or by restore).")
        return self._samplers[i]

    def _parts(self, i: int) -> tuple[BudgetedActionSampler, DeepSetsSurrogate]:
        """The sampler and surrogate of search ``i`` (built at the first ask or by restore)."""
        if self._samplers is None or self._surrogates is None:
            raise RuntimeError("The sampler is built at the first ask (or by restore).")
        return self._samplers[i], self._surrogates[i]

    def _index(self, sparsity: float | None) -> int:
        if sparsity is None:
            if len(self.sparsities) != 1:
                raise ValueError(
                    f"BETController has several sparsities {self.sparsities}; pass `sparsity`."
                )
            return 0
        return self.sparsities.index(self._check_sparsity(sparsity))

    # Progress ----------------------------------------------------------------------------
    def _num_retrain(self, search: _Search) -> int:
        if not self.retrain:
            return 0
        return min(self.top_k, len(search.ranking()))

    def _search_done(self, search: _Search) -> bool:
        if search.t < self.search_iterations:
            return False
        return len(search.retrain_fitness) >= self._num_retrain(search)

    def _active(self) -> int | None:
        for i, search in enumerate(self._searches):
            if not self._search_done(search):
                return i
        return None

    def _is_done(self) -> bool:
        return self._active() is None

    def _total_steps(self) -> int:
        per = self.search_iterations + (
            min(self.top_k, self.search_iterations) if self.retrain else 0
        )
        return per * len(self.sparsities)

    # Ask / tell --------------------------------------------------------------------------
    def _ask(self, observation: Any) -> Decision:
        i = self._active()
        if i is None:
            raise RuntimeError("BETController is done; there is nothing more to ask.")
        search = self._searches[i]
        if len(search.fitness) != search.t - search.failed:
            raise RuntimeError(
                f"BETController state is inconsistent (archive of {len(search.fitness)} for "
                f"{search.t} iterations, {search.failed} failed); restore full state with "
                "restore(directory), not set_state alone."
            )
        c = search.sparsity
        budget = self._known_problem().budget(c)
        sampler, _ = self._parts(i)
        if search.t < self.search_iterations:
            return self._ask_search(i, search, sampler, budget)
        short = self._shortlist(i, self.top_k)
        j = len(search.retrain_fitness)
        if j >= len(short):
            raise RuntimeError(
                f"BETController: {len(short)} of the top {self.top_k} actions at c={c:g} are "
                f"within the budget, {self._num_retrain(search)} were expected."
            )
        a = short.entries[j].index
        self._chosen = {"kind": "retrain", "search": i, "archive_index": a}
        return Decision(
            plan=short.entries[j].plan,
            mode="scratch",
            budget=budget,
            phase="final",
            info={
                "method": self.name,
                "sparsity": c,
                "retrain_rank": j,
                "archive_index": a,
                "search_fitness": float(search.fitness[a]),
                "search_iteration": int(search.iterations[a]),
            },
        )

    def _ask_search(
        self, i: int, search: _Search, sampler: BudgetedActionSampler, budget: Any
    ) -> Decision:
        t = search.t
        batch = sampler.sample(self.num_candidates, search.rng)
        _, surrogate = self._parts(i)
        # Sizes are rank-assigned, so histograms are the surrogate's fast input.
        h, predicted = surrogate.embed_and_predict(SortedSizes(batch.counts))
        strategy = self.strategy_cycle[t % len(self.strategy_cycle)]
        if strategy == "nearest" and len(search.fitness) == 0:
            strategy = "random"  # nothing archived yet to be near to
        if strategy == "predict":
            k = int(np.argmax(predicted))
        elif strategy == "random":
            k = int(search.rng.integers(0, len(batch)))
        else:
            best = int(search.ranking()[0])
            h_best = surrogate.embed(SortedSizes(search.counts[best]))
            k = int(np.argmin(np.linalg.norm(h - h_best, axis=1)))
        users, items = sampler.entity_sizes(batch.counts[k])
        fam = batch.family_names(k)
        self._chosen = {
            "kind": "search",
            "search": i,
            "counts": batch.counts[k].copy(),
            "predicted": float(predicted[k]),
            "strategy": STRATEGIES.index(strategy),
        }
        length = (
            {"train_steps": self.finetune_steps}
            if self.finetune_steps is not None
            else {"train_epochs": self.finetune_epochs}
        )
        return Decision(
            plan=self._known_problem().plan_from_sizes(users, items),
            mode="snapshot" if self.search_start == "full" else "scratch",
            budget=budget,
            phase="search",
            info={
                "method": self.name,
                "sparsity": search.sparsity,
                "iteration": t,
                "strategy": strategy,
                "candidate": k,
                "predicted_fitness": float(predicted[k]),
                "predicted_max": float(predicted.max()),
                "user_share": float(batch.weights[k]),
                "user_family": fam[0],
                "item_family": fam[1],
                "user_beta": float(batch.betas[k, 0]),
                "item_beta": float(batch.betas[k, 1]),
                "redraws": int(batch.redraws[k].sum()),
                "clipped": bool(batch.clipped[k].any()),
            },
            **length,
        )

    def _tell(self, decision: Decision, feedback: Any) -> None:
        chosen = self._chosen
        self._chosen = None
        if chosen is None:
            raise RuntimeError("BETController lost its pending action; ask again.")
        i = chosen["search"]
        search = self._searches[i]
        c = search.sparsity
        fitness = fitness_of(feedback)
        if feedback.ok and feedback.quality_ratio is None and not self._warned_no_ratio:
            self._warned_no_ratio = True
            logger.warning(
                "Feedback has no quality_ratio (no full-size reference); BET uses the raw "
                "validation quality as fitness."
            )
        if chosen["kind"] == "retrain":
            value = selection_value(feedback, self.monitor) if feedback.ok else None
            search.retrain_fitness.append(fitness)
            search.retrain_values.append(value)
            if fitness is not None and value is not None:  # fitness is None iff the step failed
                self._metrics = {f"{c:g}/retrain_fitness": fitness, f"{c:g}/retrain_value": value}
            return
        t = search.t
        search.t += 1
        if fitness is None:
            search.failed += 1
            return
        if self.retrain and not self._warned_no_monitor and self.monitor != "quality":
            if self.monitor not in feedback.metrics:
                self._warned_no_monitor = True
                logger.warning(
                    "Feedback has no %r (it has %s): the final retraining cannot choose by "
                    "it. Pass BETController(monitor=...) with a metric the environment reports "
                    "or 'quality'.",
                    self.monitor,
                    sorted(feedback.metrics),
                )
        search.append(chosen["counts"], fitness, chosen["predicted"], t, chosen["strategy"])
        sampler, surrogate = self._parts(i)
        info = surrogate.update(
            [SortedSizes(c) for c in search.counts],
            search.fitness,
            rng=search.rng,
            num_updates=self.surrogate_updates,
        )
        params = int(chosen["counts"].sum(axis=0) @ np.arange(1, sampler.d_max + 1))
        params *= self._known_problem().tables_per_side
        self._metrics = {
            f"{c:g}/fitness": fitness,
            f"{c:g}/predicted_fitness": chosen["predicted"],
            f"{c:g}/prediction_error": chosen["predicted"] - fitness,
            f"{c:g}/surrogate_loss": info.loss,
            f"{c:g}/surrogate_learning_rate": info.learning_rates[-1],
            f"{c:g}/params": float(params),
            f"{c:g}/best_fitness": float(search.fitness.max()),
        }

    # Results -----------------------------------------------------------------------------
    def archive(self, sparsity: float | None = None) -> Archive:
        """The population of ``sparsity``'s search (copies)."""
        s = self._searches[self._index(sparsity)]
        return Archive(
            counts=s.counts.copy(),
            fitness=s.fitness.copy(),
            predicted=s.predicted.copy(),
            iterations=s.iterations.copy(),
            strategies=s.strategies.copy(),
        )

    def top_actions(
        self, k: int | None = None, sparsity: float | None = None
    ) -> list[ArchivedAction]:
        """The ``k`` (default `top_k`) best distinct archived actions, best first.

        Raises:
            RuntimeError: the frequencies are unknown (no ask and no restore yet).
        """
        i = self._index(sparsity)
        k = self.top_k if k is None else k
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
            raise ValueError(f"`k` must be a positive integer. Received: k={k!r}")
        if self._samplers is None:
            raise RuntimeError("top_actions needs the problem: ask once or restore first.")
        search = self._searches[i]
        out = []
        for rank, entry in enumerate(self._shortlist(i, k).entries):
            a = entry.index
            told = rank < len(search.retrain_fitness)
            out.append(
                ArchivedAction(
                    plan=entry.plan,
                    fitness=float(search.fitness[a]),
                    predicted_fitness=float(search.predicted[a]),
                    iteration=int(search.iterations[a]),
                    strategy=STRATEGIES[int(search.strategies[a])],
                    sparsity=search.sparsity,
                    retrain_fitness=search.retrain_fitness[rank] if told else None,
                    retrain_value=search.retrain_values[rank] if told else None,
                )
            )
        return out

    def candidates(self, sparsity: float | None = None) -> list[Candidate]:
        """Every archived action of ``sparsity`` as a selection `Candidate`, in archive order.

        The score is the search fitness; ``info`` holds ``iteration``, ``predicted_fitness``,
        ``strategy`` and ``archive_index``. `tfembsize.search.selection.shortlist` of these is
        what `top_actions` and the final retraining use.

        Raises:
            RuntimeError: the frequencies are unknown (no ask and no restore yet).
        """
        i = self._index(sparsity)
        if self._samplers is None:
            raise RuntimeError("candidates needs the problem: ask once or restore first.")
        search, sampler = self._searches[i], self._samplers[i]
        out = []
        for a in range(len(search.fitness)):
            users, items = sampler.entity_sizes(search.counts[a])
            out.append(
                Candidate(
                    plan=self._known_problem().plan_from_sizes(users, items),
                    score=float(search.fitness[a]),
                    info={
                        "archive_index": a,
                        "iteration": int(search.iterations[a]),
                        "predicted_fitness": float(search.predicted[a]),
                        "strategy": STRATEGIES[int(search.strategies[a])],
                    },
                )
            )
        return out

    def _shortlist(self, i: int, k: int) -> Shortlist:
        c = self._searches[i].sparsity
        return shortlist(self.candidates(c), k, self._known_problem().budget(c))

    def _best_plan(self, sparsity: float) -> SizePlan | None:
        if self._samplers is None:
            return None
        i = self.sparsities.index(sparsity)
        search = self._searches[i]
        if len(search.fitness) == 0:
            return None
        short = self._shortlist(i, max(1, len(search.retrain_values)))
        if short.missed:
            return None
        winner = choose_winner(search.retrain_values)
        return short.entries[0 if winner is None else winner].plan

    # State -------------------------------------------------------------------------------
    def _get_state(self) -> dict:
        return {
            "searches": [
                {
                    "sparsity": s.sparsity,
                    "t": s.t,
                    "failed": s.failed,
                    "archive_size": int(s.fitness.size),
                    "retrain_fitness": list(s.retrain_fitness),
                    "retrain_values": list(s.retrain_values),
                    "rng": generator_state(s.rng),
                }
                for s in self._searches
            ]
        }

    def _set_state(self, state: Mapping[str, Any]) -> None:
        saved = state["searches"]
        if [s["sparsity"] for s in saved] != list(self.sparsities):
            raise ValueError("The saved BET state has different sparsities.")
        for search, s in zip(self._searches, saved, strict=True):
            search.t = int(s["t"])
            search.failed = int(s["failed"])
            search.retrain_fitness = [None if f is None else float(f) for f in s["retrain_fitness"]]
            values = list(s.get("retrain_values", []))  # absent in states saved before it
            values += [None] * (len(search.retrain_fitness) - len(values))
            search.retrain_values = [None if v is None else float(v) for v in values]
            set_generator_state(search.rng, s["rng"])
        self._chosen = None

    def _array_logs(self) -> dict[str, AppendOnlyArrays]:
        return {f"archive_{i}": s.log for i, s in enumerate(self._searches) if s.log is not None}

    def _trackables(self) -> dict[str, Any]:
        if self._surrogates is None:
            return {}
        return {f"surrogate_{i}": s for i, s in enumerate(self._surrogates)}
