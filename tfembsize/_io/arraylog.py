"""`AppendOnlyArrays`: growing arrays persisted as write-once chunk files."""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from typing import Any

import numpy as np

from tfembsize._io.files import DEFAULT_REMEDY, read_npz, write_error, write_npz
from tfembsize.errors import StateFileError, StateWriteError

__all__ = ["AppendOnlyArrays"]

_CHUNK = re.compile(r"^(\d+)-(\d+)\.npz$")
_CHUNK_FORMAT = "tfembsize.ArrayLogChunk"


class AppendOnlyArrays:
    """Named arrays that grow along their first axis, persisted as write-once chunk files.

    Rows are appended in memory (`append`); `flush` writes the rows not yet on disk as one new
    chunk file ``<start>-<stop>.npz`` in ``directory`` and returns the committed length. Old
    chunks are never rewritten, so saving after every step costs only the new rows. The
    length to trust is recorded by the caller in its own (atomically replaced) state file;
    `load` reads the chunks up to that length and ignores rows beyond it (left by a crash
    between a flush and the caller's commit).

    Args:
        fields: name -> (row shape, dtype), e.g. ``{"state": ((3,), "float32")}``.

    Example:
        >>> import tempfile
        >>> log = AppendOnlyArrays({"x": ((2,), "float32")})
        >>> log.append(x=np.ones((3, 2)))
        >>> d = tempfile.mkdtemp()
        >>> n = log.flush(d)
        >>> AppendOnlyArrays.load(d, {"x": ((2,), "float32")}, n)["x"].shape
        (3, 2)
    """

    def __init__(self, fields: Mapping[str, tuple[tuple[int, ...], Any]]) -> None:
        if not fields:
            raise ValueError("`fields` must name at least one array.")
        self.fields = {
            str(k): (tuple(int(s) for s in v[0]), np.dtype(v[1])) for k, v in fields.items()
        }
        # Storage grows by doubling (appending is amortised O(rows), not a copy of the whole
        # log per append); rows ``[:self._n]`` are the log.
        self._data = {k: np.zeros((0, *shape), dtype) for k, (shape, dtype) in self.fields.items()}
        self._n = 0
        # Rows already written, per folder: saving into a new folder writes every row there.
        self._flushed: dict[str, int] = {}

    def __len__(self) -> int:
        return self._n

    @property
    def arrays(self) -> dict[str, np.ndarray]:
        """The rows held in memory, by field (read-only views)."""
        out = {}
        for k, v in self._data.items():
            view = v[: self._n].view()
            view.flags.writeable = False
            out[k] = view
        return out

    def append(self, **rows: Any) -> None:
        """Appends the same number of rows to every field.

        Raises:
            ValueError: a field is missing or unknown, or the row shapes or counts disagree.
        """
        if set(rows) != set(self.fields):
            raise ValueError(
                f"`append` needs exactly the fields {sorted(self.fields)}. Received: {sorted(rows)}"
            )
        counts = set()
        converted = {}
        for name, value in rows.items():
            shape, dtype = self.fields[name]
            arr = np.asarray(value, dtype=dtype)
            if arr.shape[1:] != shape:
                raise ValueError(
                    f"Rows of {name!r} must have shape (n, {', '.join(map(str, shape))}). "
                    f"Received shape {arr.shape}."
                )
            counts.add(arr.shape[0])
            converted[name] = arr
        if len(counts) != 1:
            raise ValueError(f"Every field needs the same number of rows. Received {counts}.")
        add = counts.pop()
        need = self._n + add
        for name, arr in converted.items():
            store = self._data[name]
            if need > store.shape[0]:
                grown = np.zeros((max(need, 2 * store.shape[0], 16), *store.shape[1:]), store.dtype)
                grown[: self._n] = store[: self._n]
                self._data[name] = store = grown
            store[self._n : need] = arr
        self._n = need

    def truncate(self, length: int) -> None:
        """Keeps the first ``length`` rows (rows already flushed past it are rewritten later)."""
        self._n = min(self._n, max(0, int(length)))
        self._flushed = {d: min(n, length) for d, n in self._flushed.items()}

    def flush(self, directory: str | os.PathLike[str]) -> int:
        """Writes the rows not yet in ``directory`` as one chunk there; returns the length.

        Rows are tracked per folder: the first flush into a folder writes every row.

        Raises:
            tfembsize.errors.StateWriteError: the folder cannot be written (disk full,
                read-only, no permission); the committed chunks are intact.
        """
        key = os.path.realpath(os.fspath(directory))
        directory = os.fspath(directory)
        n = len(self)
        done = self._flushed.get(key, 0)
        try:
            if n > done:
                # Chunks from this row on were written and never committed (a crash between a
                # flush and the caller's commit): drop them so every row has one chunk.
                if os.path.isdir(directory):
                    for entry in os.listdir(directory):
                        m = _CHUNK.match(entry)
                        if m is not None and int(m.group(1)) >= done:
                            os.remove(os.path.join(directory, entry))
                chunk = {k: v[done:n] for k, v in self._data.items()}
                path = os.path.join(directory, f"{done:012d}-{n:012d}.npz")
                write_npz(path, chunk, format=_CHUNK_FORMAT)
                self._flushed[key] = n
            else:
                os.makedirs(directory, exist_ok=True)
        except StateWriteError:
            raise
        except OSError as e:
            raise write_error(directory, e) from e
        return n

    def reload(self, directory: str | os.PathLike[str], length: int) -> None:
        """Replaces the rows in memory by the first ``length`` committed rows in ``directory``."""
        restored = type(self).restore(directory, self.fields, length)
        self._data = restored._data
        self._n = restored._n
        self._flushed = restored._flushed

    @classmethod
    def load(
        cls,
        directory: str | os.PathLike[str],
        fields: Mapping[str, tuple[tuple[int, ...], Any]],
        length: int,
    ) -> dict[str, np.ndarray]:
        """Reads the first ``length`` rows written by `flush` into ``directory``.

        Raises:
            StateFileError: the chunks do not cover rows ``0 .. length``.
        """
        log = cls.restore(directory, fields, length)
        return {k: np.array(v) for k, v in log.arrays.items()}

    @classmethod
    def restore(
        cls,
        directory: str | os.PathLike[str],
        fields: Mapping[str, tuple[tuple[int, ...], Any]],
        length: int,
    ) -> AppendOnlyArrays:
        """An `AppendOnlyArrays` holding the first ``length`` committed rows, ready to grow."""
        directory = os.path.normpath(os.fspath(directory))
        log = cls(fields)
        if length == 0:
            return log
        chunks = []
        names = sorted(os.listdir(directory)) if os.path.isdir(directory) else []
        for entry in names:
            m = _CHUNK.match(entry)
            if m is not None:
                chunks.append((int(m.group(1)), int(m.group(2)), entry))
        position = 0
        parts: dict[str, list[np.ndarray]] = {k: [] for k in log.fields}
        by_start = {c[0]: c for c in chunks}
        remedy = DEFAULT_REMEDY
        while position < length:
            if position not in by_start:
                raise StateFileError(
                    f"The array log in {directory!r} has no chunk starting at row {position}; "
                    f"{length} rows were committed. {remedy}"
                )
            start, stop, entry = by_start[position]
            path = os.path.join(directory, entry)
            arrays = read_npz(
                path, format=_CHUNK_FORMAT, what="array log chunk", remedy=remedy, untagged=True
            )
            take = min(stop, length) - start
            for k, (shape, _) in log.fields.items():
                part = arrays.get(k)
                if part is None or part.shape[1:] != shape or part.shape[0] != stop - start:
                    raise StateFileError(
                        f"The array log chunk {path!r} does not hold rows {start}..{stop} of "
                        f"{k!r} with shape {shape}. {remedy}"
                    )
                parts[k].append(part[:take])
            position = start + take
        for k in log.fields:
            log._data[k] = np.concatenate(parts[k]).astype(log.fields[k][1], copy=False)
        log._n = int(length)
        log._flushed = {os.path.realpath(directory): length}
        return log
