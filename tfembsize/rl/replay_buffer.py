"""`ReplayBuffer`: a numpy ring of transitions, saved incrementally, sampled with replacement."""

from __future__ import annotations

import os
from typing import Any, NamedTuple

import numpy as np

from tfembsize._io import AppendOnlyArrays

__all__ = ["ReplayBuffer", "Transitions"]


class Transitions(NamedTuple):
    """A batch of transitions ``(s, a, r, s')`` (float32 arrays, first axis = batch)."""

    states: np.ndarray
    actions: np.ndarray
    rewards: np.ndarray
    next_states: np.ndarray


class ReplayBuffer:
    """A ring buffer of ``(state, action, reward, next_state)`` transitions.

    Holds the last ``capacity`` transitions pushed; `sample` draws a batch uniformly with
    replacement with the caller's generator. Pushed transitions are also kept in an
    append-only log, so `save` writes only the transitions pushed since the last save to the
    same folder (a buffer of 100 transitions per entity is never rewritten whole), and
    `restore` rebuilds the ring from the last ``capacity`` committed ones.

    Args:
        state_dim: features per state.
        action_dim: numbers per action.
        capacity: transitions kept (older ones are overwritten).

    Example:
        >>> buf = ReplayBuffer(state_dim=3, action_dim=1, capacity=4)
        >>> buf.push(np.zeros((6, 3)), np.ones((6, 1)), np.arange(6.0), np.zeros((6, 3)))
        >>> len(buf), sorted(buf.contents().rewards.tolist())
        (4, [2.0, 3.0, 4.0, 5.0])
    """

    def __init__(self, state_dim: int, action_dim: int, capacity: int) -> None:
        for name, value in (
            ("state_dim", state_dim),
            ("action_dim", action_dim),
            ("capacity", capacity),
        ):
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
                raise ValueError(f"`{name}` must be a positive integer. Received: {name}={value!r}")
        self.state_dim = int(state_dim)
        self.action_dim = int(action_dim)
        self.capacity = int(capacity)
        self._log = AppendOnlyArrays(
            {
                "states": ((self.state_dim,), np.float32),
                "actions": ((self.action_dim,), np.float32),
                "rewards": ((), np.float32),
                "next_states": ((self.state_dim,), np.float32),
            }
        )

    def __len__(self) -> int:
        return min(len(self._log), self.capacity)

    @property
    def num_pushed(self) -> int:
        """Transitions pushed in all (including those the ring has overwritten)."""
        return len(self._log)

    def push(self, states: Any, actions: Any, rewards: Any, next_states: Any) -> None:
        """Adds a batch of transitions (the oldest ones beyond ``capacity`` drop out).

        Raises:
            ValueError: shapes disagree with ``state_dim``/``action_dim`` or with each other,
                or a value is not finite.
        """
        s = np.asarray(states, np.float32)
        a = np.asarray(actions, np.float32)
        r = np.asarray(rewards, np.float32)
        s2 = np.asarray(next_states, np.float32)
        if a.ndim == 1 and self.action_dim == 1:
            a = a[:, None]
        for name, arr in (("states", s), ("actions", a), ("rewards", r), ("next_states", s2)):
            if not np.all(np.isfinite(arr)):
                raise ValueError(f"`{name}` holds NaN or infinite values.")
        self._log.append(states=s, actions=a, rewards=r, next_states=s2)

    def contents(self) -> Transitions:
        """The transitions the ring holds now, oldest first (copies)."""
        arrays = self._log.arrays
        start = max(0, len(self._log) - self.capacity)
        return Transitions(
            *(np.array(arrays[k][start:]) for k in ("states", "actions", "rewards", "next_states"))
        )

    def sample(self, batch_size: int, rng: np.random.Generator) -> Transitions:
        """``batch_size`` transitions drawn uniformly with replacement.

        Raises:
            ValueError: the buffer is empty or ``batch_size`` is not a positive integer.
        """
        if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)):
            raise ValueError(f"`batch_size` must be a positive integer. Received: {batch_size!r}")
        if batch_size < 1:
            raise ValueError(f"`batch_size` must be a positive integer. Received: {batch_size}")
        n = len(self)
        if n == 0:
            raise ValueError("The replay buffer is empty; push transitions before sampling.")
        start = len(self._log) - n
        idx = start + rng.integers(0, n, size=int(batch_size))
        arrays = self._log.arrays
        return Transitions(
            *(arrays[k][idx] for k in ("states", "actions", "rewards", "next_states"))
        )

    def save(self, directory: str | os.PathLike[str]) -> int:
        """Appends the transitions not yet in ``directory``; returns the count to commit."""
        return self._log.flush(directory)

    def restore(self, directory: str | os.PathLike[str], num_pushed: int) -> None:
        """Reloads the first ``num_pushed`` transitions saved in ``directory``."""
        self._log.reload(directory, int(num_pushed))

    def log(self) -> AppendOnlyArrays:
        """The append-only log behind the ring (what a controller's ``_array_logs`` returns)."""
        return self._log
