"""The ask/tell controller interface shared by every embedding-size search method.

A controller decides which sizes to try; it never sees the recommender. The search loop
(`tfembsize.search.run`) hands it an `Observation` (table layout, training frequencies,
``d_max``, the last feedback), receives a `Decision` (a `SizePlan` within a budget and the
environment mode it needs), runs the environment step, and returns the `Feedback`:

    decision = controller.ask(observation)
    feedback = env.step(decision.plan, decision.mode, train_steps=decision.train_steps)
    controller.tell(decision, feedback)
    controller.save(directory)          # after every step; restore(directory) resumes

The base class owns the public methods and validates their input and output; subclasses
override the hooks ``_ask``/``_tell``/``_is_done`` (and, for run state, ``_get_state``,
``_set_state``, ``_get_arrays``, ``_set_arrays``, ``_trackables``). State is split three ways,
none of it pickled: JSON (`get_state`: config, counters, generator states), ``.npz`` (buffers
such as an archive of actions) and ``tf.train.Checkpoint`` (networks).
"""

from __future__ import annotations

import abc
import json
import logging
import os
import re
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import numpy as np

from tfembsize import _io
from tfembsize.budget import Budget
from tfembsize.controllers._common import (
    _json_copy,
    generator_state,
    set_generator_state,
    validate_seed,
    validate_sparsities,
)
from tfembsize.errors import StateFileError
from tfembsize.plan import SizePlan
from tfembsize.records import (
    MODES,
    PHASES,
    Decision,
    Feedback,
    Observation,
    Problem,
    fitness_of,
)

__all__ = [
    "Controller",
    "Decision",
    "Problem",
    "MODES",
    "PHASES",
    "fitness_of",
    "generator_state",
    "set_generator_state",
    "validate_sparsities",
]

logger = logging.getLogger(__name__)

_STATE_FORMAT = "tfembsize.Controller"


# Controller ---------------------------------------------------------------------------------
class Controller(abc.ABC):
    """Base class of embedding-size controllers (ask/tell, resumable, seeded).

    The public methods validate and keep the books; subclasses override hooks:

    * ``_ask(observation) -> Decision`` (required). It may advance generators and change
      JSON state, but must not change arrays or networks: those change only in ``_tell``.
      This is what makes `get_state` during a pending decision well defined: the state
      returned is the one from before the ask, and asking again after `set_state` gives the
      same decision.
    * ``_tell(decision, feedback)`` (required): learn from the feedback.
    * ``_is_done() -> bool`` (required).
    * ``_total_steps() -> int | None``: the number of asks a full run makes (progress bar).
    * ``_get_state() / _set_state(state)``: JSON run state of the subclass.
    * ``_get_arrays() / _set_arrays(arrays)``: numpy buffers, saved as ``.npz``.
    * ``_trackables() -> dict``: networks saved with ``tf.train.Checkpoint``.
    * ``_best_plan(sparsity) -> SizePlan | None``.
    * ``get_config()`` must return exactly the constructor arguments.

    Args:
        sparsity: target sparsity c in (0, 1), or a sequence of them; each gets its own
            budget B(c) = floor((1 - c) * d_max * N), and every plan the controller returns
            satisfies its budget (asserted in `ask`).
        seed: seed of the controller's generators; None draws fresh entropy (recorded in the
            state, so a restored run continues identically).

    Example:
        >>> controller = tfembsize.controllers.ES(sparsity=(0.8, 0.9))  # doctest: +SKIP
        >>> while not controller.done:  # doctest: +SKIP
        ...     decision = controller.ask(env.observation())
        ...     controller.tell(decision, env.step(decision.plan, decision.mode))
    """

    name: ClassVar[str] = "controller"
    budgeted_decisions: ClassVar[bool] = True
    """True: every decision carries a budget its plan satisfies (asserted in `ask`). False:
    search decisions may have ``budget=None`` (e.g. an RL controller's exploration steps);
    a decision that does carry a budget is still checked, and so is every result
    (`best_plan`)."""

    def __init__(self, sparsity: float | Sequence[float], *, seed: int | None = None) -> None:
        self._sparsities = validate_sparsities(sparsity)
        self._seed = validate_seed(seed)
        entropy = np.random.SeedSequence(self._seed).entropy
        self._entropy: int = int(entropy)  # type: ignore[arg-type]
        self._rng = np.random.default_rng(np.random.SeedSequence(self._entropy))
        self._problem: Problem | None = None
        self._pending: Decision | None = None
        self._state_before_ask: dict[str, Any] | None = None
        self._num_asked = 0
        self._num_told = 0
        self._metrics: dict[str, float] = {}

    # Configuration -------------------------------------------------------------------------
    def get_config(self) -> dict[str, Any]:
        """The constructor arguments (JSON)."""
        return {"sparsity": list(self._sparsities), "seed": self._seed}

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> Controller:
        """A new controller from `get_config` output."""
        config = dict(config)
        if isinstance(config.get("sparsity"), list):
            config["sparsity"] = tuple(config["sparsity"])
        for key, value in list(config.items()):
            if isinstance(value, list):
                config[key] = tuple(value)
        return cls(**config)

    # Properties ------------------------------------------------------------------------------
    @property
    def sparsities(self) -> tuple[float, ...]:
        """The target sparsities, in the order they are searched."""
        return self._sparsities

    @property
    def seed(self) -> int | None:
        """The seed given to the constructor."""
        return self._seed

    @property
    def rng(self) -> np.random.Generator:
        """The controller's generator (its state is part of `get_state`)."""
        return self._rng

    @property
    def problem(self) -> Problem | None:
        """The problem seen at the first ask (None before)."""
        return self._problem

    def _known_problem(self) -> Problem:
        """The problem; raises RuntimeError before the first ask or restore."""
        if self._problem is None:
            raise RuntimeError(
                f"{type(self).__name__} does not know the problem yet: ask once or restore first."
            )
        return self._problem

    @property
    def budgets(self) -> dict[float, Budget] | None:
        """Budget per target sparsity (None until ``d_max`` is known from an observation)."""
        if self._problem is None:
            return None
        return {c: self._problem.budget(c) for c in self._sparsities}

    @property
    def pending(self) -> Decision | None:
        """The decision asked for and not yet told."""
        return self._pending

    @property
    def iteration(self) -> int:
        """Number of decisions told so far."""
        return self._num_told

    @property
    def done(self) -> bool:
        """True when the controller has nothing more to ask."""
        return self._pending is None and self._is_done()

    @property
    def num_iterations(self) -> int | None:
        """How many asks a full run makes (an upper bound; None if open-ended)."""
        return self._total_steps()

    def child_rng(self, *keys: int) -> np.random.Generator:
        """A generator derived from the controller's seed and ``keys`` (stateless derivation)."""
        return np.random.default_rng(np.random.SeedSequence(self._entropy, spawn_key=keys))

    # Ask / tell ------------------------------------------------------------------------------
    def ask(self, observation: Observation) -> Decision:
        """The next decision.

        Args:
            observation: a `tfembsize.search.Observation`. Its tables, ``d_max`` and
                frequencies must stay the same for the whole run.

        Returns:
            A `Decision` whose plan satisfies ``decision.budget`` (asserted).

        Raises:
            TypeError: ``observation`` is not an `Observation`.
            RuntimeError: a decision is pending (call `tell` first) or the controller is done.
            ValueError: the observation describes a different problem from the first one.
            BudgetInfeasibleError: a target sparsity leaves less than one parameter per row.
        """
        if not isinstance(observation, Observation):
            raise TypeError(
                "`observation` must be a tfembsize.search.Observation. Received: "
                f"{type(observation).__name__}"
            )
        if self._pending is not None:
            raise RuntimeError(
                f"{type(self).__name__} already has a pending decision (id={self._pending.id}); "
                "call tell(decision, feedback) before asking again."
            )
        if self._is_done():
            raise RuntimeError(f"{type(self).__name__} is done; there is nothing more to ask.")
        self._adopt(observation)
        problem = self._known_problem()
        for c in self._sparsities:
            problem.size_limit(c)  # raises BudgetInfeasibleError early and clearly
        before = self.get_state()
        decision = self._ask(observation)
        if not isinstance(decision, Decision):
            raise TypeError(
                f"{type(self).__name__}._ask must return a Decision. Received "
                f"{type(decision).__name__}."
            )
        self._check_decision(decision, observation)
        decision = decision.replace(id=self._num_asked)
        self._num_asked += 1
        self._pending = decision
        self._state_before_ask = before
        return decision

    def tell(self, decision: Decision, feedback: Feedback) -> None:
        """Reports the environment's feedback on ``decision``.

        Args:
            decision: the decision returned by the last `ask`.
            feedback: a `tfembsize.search.Feedback` (a failed step is allowed; controllers
                do not learn from its numbers).

        Raises:
            RuntimeError: there is no pending decision.
            ValueError: ``decision`` is not the pending decision.
            TypeError: ``feedback`` is not a `Feedback`.
        """
        if self._pending is None:
            raise RuntimeError(
                f"{type(self).__name__}.tell() called with no pending decision; call ask() first."
            )
        if not isinstance(decision, Decision) or decision.id != self._pending.id:
            got = decision.id if isinstance(decision, Decision) else type(decision).__name__
            raise ValueError(
                f"`decision` is not the pending decision (id={self._pending.id}). Received: {got!r}"
            )
        if decision != self._pending:
            raise ValueError(
                f"`decision` (id={decision.id}) was changed after ask(); tell the decision "
                "object that ask() returned."
            )
        if not isinstance(feedback, Feedback):
            raise TypeError(
                "`feedback` must be a tfembsize.search.Feedback. Received: "
                f"{type(feedback).__name__}"
            )
        if not feedback.ok:
            logger.warning(
                "%s: step %d failed (%s); not learning from it.",
                type(self).__name__,
                decision.id,
                feedback.message,
            )
        self._metrics = {}
        self._tell(decision, feedback)
        self._pending = None
        self._state_before_ask = None
        self._num_told += 1

    def _adopt(self, observation: Observation) -> None:
        if self._problem is None:
            self._problem = Problem.from_observation(observation)
            self._on_problem()
            return
        diff = self._problem.same_as(observation)
        if diff is not None:
            raise ValueError(
                f"The observation describes a different problem from the one "
                f"{type(self).__name__} started with: {diff}."
            )
        if not self._problem.has_frequencies:
            self._problem = self._problem.with_frequencies(
                observation.user_frequencies, observation.item_frequencies
            )
            self._on_problem()

    def _on_problem(self) -> None:
        """Called once the problem (with frequencies) is known; subclasses may prepare."""
        return None

    def _check_decision(self, decision: Decision, observation: Observation) -> None:
        plan = decision.plan
        if set(plan) != set(observation.tables):
            raise ValueError(
                f"{type(self).__name__} returned a plan for tables {sorted(plan)}; the "
                f"observation has {sorted(observation.tables)}."
            )
        users, items = self._known_problem().sizes_from_plan(plan)
        for name, side in observation.tables.items():
            want = users if side == "user" else items
            if plan[name].shape != want.shape or not np.array_equal(plan[name], want):
                raise ValueError(f"Plan table {name!r} must share the {side} sizes.")
        if users.size != observation.num_users or items.size != observation.num_items:
            raise ValueError(
                f"Plan sizes have lengths ({users.size}, {items.size}); expected "
                f"({observation.num_users}, {observation.num_items})."
            )
        if decision.budget is None:
            if self.budgeted_decisions:
                raise ValueError(
                    f"{type(self).__name__} returned a decision without a budget; set the "
                    "class attribute `budgeted_decisions = False` if its search steps are "
                    "deliberately unbudgeted (its results are still budget-checked)."
                )
            return
        if decision.budget.sparsity not in self._sparsities:
            raise ValueError(
                f"Decision budget sparsity {decision.budget.sparsity} is not a target "
                f"{self._sparsities}."
            )
        plan.check(decision.budget)  # the budget guarantee, asserted

    # Results ---------------------------------------------------------------------------------
    def best_plan(self, sparsity: float | None = None) -> SizePlan | None:
        """The controller's answer for ``sparsity`` (the only one if None); None if none yet."""
        if sparsity is None:
            if len(self._sparsities) != 1:
                raise ValueError(
                    f"{type(self).__name__} has several sparsities {self._sparsities}; pass "
                    "`sparsity`."
                )
            sparsity = self._sparsities[0]
        sparsity = self._check_sparsity(sparsity)
        return self._checked_result(sparsity)

    def best_plans(self) -> dict[float, SizePlan | None]:
        """`best_plan` for every target sparsity."""
        return {c: self._checked_result(c) for c in self._sparsities}

    def _checked_result(self, sparsity: float) -> SizePlan | None:
        """The subclass's answer for ``sparsity``, asserted within B(sparsity)."""
        plan = self._best_plan(sparsity)
        if plan is not None and self._problem is not None:
            plan.check(self._problem.budget(sparsity))  # every result within its budget
        return plan

    def _check_sparsity(self, sparsity: float) -> float:
        s = float(sparsity)
        if s not in self._sparsities:
            raise ValueError(
                f"`sparsity` must be one of the controller's {self._sparsities}. Received: "
                f"sparsity={sparsity!r}"
            )
        return s

    def metrics(self) -> dict[str, float]:
        """Scalars of the last `tell` (e.g. fitness, predicted fitness, surrogate loss)."""
        return dict(self._metrics)

    def log(self, step: int, writer: Any = None) -> None:
        """Writes `metrics` as TensorBoard scalars named ``<name>/<metric>`` at ``step``.

        Args:
            step: the global step.
            writer: a ``tf.summary`` writer; None uses the default writer.
        """
        import tensorflow as tf

        def _write() -> None:
            for key, value in self._metrics.items():
                tf.summary.scalar(f"{self.name}/{key}", value, step=step)

        if writer is None:
            _write()
        else:
            with writer.as_default():
                _write()

    # State -----------------------------------------------------------------------------------
    def get_state(self) -> dict[str, Any]:
        """The JSON run state (buffers and networks are saved by `save`).

        While a decision is pending, this is the state from before that ask: restoring it and
        asking again returns the same decision.
        """
        if self._pending is not None and self._state_before_ask is not None:
            return _json_copy(self._state_before_ask)
        state = {
            "format": _STATE_FORMAT,
            "version": 1,
            "class": type(self).__name__,
            "config": self.get_config(),
            "entropy": str(self._entropy),
            "rng": generator_state(self._rng),
            "num_asked": self._num_asked,
            "num_told": self._num_told,
            "problem": None if self._problem is None else self._problem.to_dict(),
            "metrics": dict(self._metrics),
            "controller": self._get_state(),
        }
        return _json_copy(state)  # a deep copy that is certainly JSON

    def set_state(self, state: Mapping[str, Any]) -> None:
        """Restores a state from `get_state` (of a controller with the same config).

        Raises:
            ValueError: the state is not a controller state, belongs to another class, or was
                made with a different configuration.
        """
        if not isinstance(state, Mapping) or state.get("format") != _STATE_FORMAT:
            raise ValueError("`state` is not a tfembsize controller state.")
        if state.get("class") != type(self).__name__:
            raise ValueError(f"`state` belongs to {state.get('class')}, not {type(self).__name__}.")
        mine = json.loads(json.dumps(self.get_config()))
        if state["config"] != mine:
            diff = sorted(
                k for k in set(mine) | set(state["config"]) if mine.get(k) != state["config"].get(k)
            )
            raise ValueError(
                f"The saved state was made with a different configuration ({diff}: saved "
                f"{ {k: state['config'].get(k) for k in diff} }, this controller "
                f"{ {k: mine.get(k) for k in diff} }). Use a new directory or the saved config."
            )
        self._entropy = int(state["entropy"])
        set_generator_state(self._rng, state["rng"])
        self._num_asked = int(state["num_asked"])
        self._num_told = int(state["num_told"])
        old = self._problem
        problem = state["problem"]
        if problem is None:
            self._problem = None
        else:
            restored = Problem.from_dict(problem)
            if (
                old is not None
                and old.user_frequencies is not None
                and old.item_frequencies is not None
                and old.digest == restored.digest
            ):
                restored = restored.with_frequencies(old.user_frequencies, old.item_frequencies)
            self._problem = restored
            if restored.has_frequencies:
                self._on_problem()
        self._metrics = {k: float(v) for k, v in state.get("metrics", {}).items()}
        self._pending = None
        self._state_before_ask = None
        self._set_state(state["controller"])

    def save(
        self,
        directory: str | os.PathLike[str],
        *,
        logs_directory: str | os.PathLike[str] | None = None,
    ) -> None:
        """Writes the state into ``directory``: JSON, ``.npz`` buffers, network checkpoint.

        Files of one save share a generation number; ``controller.json`` (written last,
        atomically) names the generation, so a save interrupted at any point leaves the
        previous one readable. Growing buffers (`_array_logs`, e.g. a replay buffer) are not
        rewritten: only their new rows are appended as chunk files to ``logs_directory``
        (default ``directory/logs``), and ``controller.json`` records how many rows each
        save commits. A search run passes one logs folder for the whole run, so each row is
        written once.

        Args:
            directory: where the state goes.
            logs_directory: where the growing buffers are appended (kept across saves).
        """
        directory = os.fspath(directory)
        os.makedirs(directory, exist_ok=True)
        manifest = os.path.join(directory, "controller.json")
        generation = 0
        if os.path.exists(manifest):
            previous = _io.read_json(manifest, what="saved controller")
            generation = int(previous.get("generation", -1)) + 1
        state = self.get_state()
        arrays_file = f"arrays-{generation:06d}.npz"
        _io.write_npz(
            os.path.join(directory, arrays_file),
            self._all_arrays(),
            format=_STATE_FORMAT + ".arrays",
        )
        logs_dir = os.path.join(directory, "logs") if logs_directory is None else logs_directory
        logs = {}
        for name, log in self._array_logs().items():
            length = log.flush(os.path.join(logs_dir, name))
            logs[name] = length
        trackables = self._trackables()
        networks = None
        if trackables:
            import tensorflow as tf

            networks = f"networks-{generation:06d}"
            tf.train.Checkpoint(**trackables).write(os.path.join(directory, networks))
        _io.write_json(
            manifest,
            {
                "generation": generation,
                "arrays": arrays_file,
                "networks": networks,
                "logs_directory": os.path.relpath(os.fspath(logs_dir), directory) if logs else None,
                "logs": logs,
                "state": state,
            },
            format=_STATE_FORMAT + ".files",
            indent=None,
        )
        keep = {arrays_file, networks}
        for entry in os.listdir(directory):
            m = re.match(r"^(arrays|networks)-(\d{6})", entry)
            if (
                m
                and int(m.group(2)) != generation
                and not any(k and entry.startswith(k) for k in keep)
            ):
                os.remove(os.path.join(directory, entry))

    @staticmethod
    def _read_manifest(directory: str | os.PathLike[str]) -> dict[str, Any]:
        directory = os.fspath(directory)
        manifest = os.path.join(directory, "controller.json")
        if not os.path.exists(manifest):
            raise FileNotFoundError(f"No saved controller in {directory!r} (no controller.json).")
        return dict(
            _io.read_json(
                manifest, format=_STATE_FORMAT + ".files", max_version=1, what="saved controller"
            )
        )

    def restore(self, directory: str | os.PathLike[str]) -> None:
        """Reads a state written by `save` (into a controller with the same config).

        Raises:
            FileNotFoundError: ``directory`` holds no saved controller.
            ValueError: the saved state is of another class or configuration.
            tfembsize.errors.StateFileError: a saved file is damaged.
        """
        directory = os.fspath(directory)
        payload = self._read_manifest(directory)
        manifest = os.path.join(directory, "controller.json")
        missing = [k for k in ("state", "arrays") if k not in payload]
        if missing:
            raise StateFileError(
                f"The saved controller {manifest!r} lacks the entries {missing}. "
                f"{_io.DEFAULT_REMEDY}"
            )
        self.set_state(payload["state"])
        arrays = _io.read_npz(
            os.path.join(directory, payload["arrays"]),
            format=_STATE_FORMAT + ".arrays",
            what="controller arrays",
            untagged=True,
        )
        self._set_all_arrays(arrays)
        lengths = payload.get("logs") or {}
        live = self._array_logs()
        if sorted(lengths) != sorted(live):
            raise ValueError(
                f"The saved controller in {directory!r} has buffers {sorted(lengths)}; "
                f"{type(self).__name__} has {sorted(live)}."
            )
        if lengths:
            logs_dir = os.path.normpath(os.path.join(directory, payload["logs_directory"]))
            for name, log in live.items():
                log.reload(os.path.join(logs_dir, name), int(lengths[name]))
        if payload.get("networks"):
            import tensorflow as tf

            trackables = self._trackables()
            prefix = os.path.join(directory, payload["networks"])
            try:
                tf.train.Checkpoint(**trackables).read(prefix).assert_consumed()
            except (tf.errors.OpError, IndexError, ValueError, AssertionError) as e:
                names = sorted(
                    n for n in os.listdir(directory) if n.startswith(payload["networks"])
                )
                files = [os.path.join(directory, n) for n in names] or [prefix + ".*"]
                raise StateFileError(
                    f"The controller's networks {files} (named by {manifest!r}) cannot be read "
                    f"back ({type(e).__name__}: {e}). {_io.DEFAULT_REMEDY}"
                ) from e

    @classmethod
    def load(cls, directory: str | os.PathLike[str]) -> Controller:
        """A controller built from the config saved in ``directory`` and restored from it."""
        config = cls._read_manifest(directory)["state"]["config"]
        controller = cls.from_config(config)
        controller.restore(directory)
        return controller

    def _all_arrays(self) -> dict[str, np.ndarray]:
        arrays: dict[str, np.ndarray] = {}
        p = self._problem
        if p is not None and p.user_frequencies is not None and p.item_frequencies is not None:
            arrays["problem:user_frequencies"] = p.user_frequencies
            arrays["problem:item_frequencies"] = p.item_frequencies
        for k, v in self._get_arrays().items():
            arrays[f"controller:{k}"] = np.asarray(v)
        return arrays

    def _set_all_arrays(self, arrays: Mapping[str, np.ndarray]) -> None:
        if self._problem is not None and "problem:user_frequencies" in arrays:
            self._problem = self._problem.with_frequencies(
                arrays["problem:user_frequencies"], arrays["problem:item_frequencies"]
            )
            self._on_problem()
        prefix = "controller:"
        self._set_arrays({k[len(prefix) :]: v for k, v in arrays.items() if k.startswith(prefix)})

    # Hooks -----------------------------------------------------------------------------------
    @abc.abstractmethod
    def _ask(self, observation: Observation) -> Decision:
        """Returns the next decision (see the class docstring for what it may change)."""

    @abc.abstractmethod
    def _tell(self, decision: Decision, feedback: Feedback) -> None:
        """Learns from the feedback on ``decision``."""

    @abc.abstractmethod
    def _is_done(self) -> bool:
        """True when there is nothing more to ask."""

    def _total_steps(self) -> int | None:
        return None

    def _best_plan(self, sparsity: float) -> SizePlan | None:
        return None

    def _get_state(self) -> dict[str, Any]:
        return {}

    def _set_state(self, state: Mapping[str, Any]) -> None:
        del state

    def _get_arrays(self) -> dict[str, np.ndarray]:
        return {}

    def _set_arrays(self, arrays: Mapping[str, np.ndarray]) -> None:
        del arrays

    def _trackables(self) -> dict[str, Any]:
        return {}

    def _array_logs(self) -> dict[str, _io.AppendOnlyArrays]:
        """Growing buffers saved incrementally (e.g. a replay buffer), by name."""
        return {}

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(sparsity={self._sparsities}, seed={self._seed}, "
            f"iteration={self._num_told}, done={self.done})"
        )
