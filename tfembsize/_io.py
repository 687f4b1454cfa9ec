"""The one persistence toolkit: atomic, synced, tagged JSON and ``.npz`` files; append-only logs.

Every file the library writes for a run (search state, protocol cells, training checkpoints,
controller state) goes through these functions, so every write is

* **atomic**: written to a temporary file in the same folder, flushed, ``fsync``-ed, then
  renamed over the target (``os.replace``), and the folder itself is synced, so a crash at any
  moment leaves either the old file or the new one, never a torn one;
* **tagged** (when asked): a JSON payload gets ``"format"`` and ``"version"`` keys and an
  ``.npz`` a ``__format__`` entry, and the readers check them, so a file of another kind is
  refused with a clear error instead of being misread;
* **never pickled**: ``.npz`` files are read with ``allow_pickle=False``.

Large arrays that grow during a run (a replay buffer, an archive of actions) do not belong in
a state file rewritten after every step: `AppendOnlyArrays` keeps them as numbered chunk
files, each written once, and a reader takes the rows up to a committed length recorded in
the (small, atomically replaced) state file.

Readers raise `tfembsize.errors.StateFileError` naming the path for a missing, damaged or
foreign file.
"""

from __future__ import annotations

import io
import json
import os
import zipfile
from collections.abc import Mapping
from typing import Any

import numpy as np

from tfembsize.errors import StateFileError

__all__ = [
    "AppendOnlyArrays",
    "append_jsonl",
    "read_json",
    "read_npz",
    "write_bytes",
    "write_json",
    "write_npz",
]

_NPZ_FORMAT_KEY = "__format__"


def _sync_directory(directory: str) -> None:
    """Syncs a folder so a rename inside it survives a power loss (no-op where unsupported)."""
    try:
        fd = os.open(directory or ".", os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def write_bytes(path: str | os.PathLike[str], data: bytes) -> None:
    """Writes ``data`` to ``path`` atomically (temporary file, fsync, rename, folder fsync).

    Args:
        path: the target file; its folder is created if missing.
        data: the bytes to write.
    """
    path = os.fspath(path)
    directory = os.path.dirname(path)
    if directory:
        os.makedirs(directory, exist_ok=True)
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    _sync_directory(directory)


def _tagged(payload: Any, format: str | None, version: int | None) -> Any:
    if format is None:
        return payload
    if not isinstance(payload, Mapping):
        raise TypeError(
            f"A tagged JSON payload must be a mapping. Received: {type(payload).__name__}"
        )
    out = {"format": format, "version": 1 if version is None else int(version)}
    out.update({k: v for k, v in payload.items() if k not in ("format", "version")})
    return out


def write_json(
    path: str | os.PathLike[str],
    payload: Any,
    *,
    format: str | None = None,
    version: int | None = None,
    indent: int | None = 1,
) -> None:
    """Writes ``payload`` as JSON, atomically; tags it with ``format``/``version`` if given.

    Args:
        path: the target file.
        payload: JSON-serialisable data (a mapping when ``format`` is given).
        format: a format tag, e.g. ``"tfembsize.SearchRun"``; stored as ``payload["format"]``.
        version: the format's version (default 1 when ``format`` is given).
        indent: JSON indentation (None for one line).

    Example:
        >>> import tempfile, os
        >>> p = os.path.join(tempfile.mkdtemp(), "state.json")
        >>> write_json(p, {"step": 3}, format="example.State")
        >>> read_json(p, format="example.State")["step"]
        3
    """
    text = json.dumps(_tagged(payload, format, version), indent=indent, allow_nan=True)
    write_bytes(path, text.encode("utf-8"))


def read_json(
    path: str | os.PathLike[str],
    *,
    format: str | None = None,
    max_version: int | None = None,
    what: str = "file",
) -> Any:
    """Reads a JSON file written by `write_json`.

    Args:
        path: the file.
        format: the expected format tag (None: not checked).
        max_version: the newest version this reader understands (None: not checked).
        what: what the file is, for error messages (e.g. ``"search run state"``).

    Returns:
        The decoded payload.

    Raises:
        StateFileError: the file is missing, is not valid JSON, or has another format tag or a
            newer version; the message names the path.
    """
    path = os.fspath(path)
    try:
        with open(path, encoding="utf-8") as f:
            payload = json.load(f)
    except FileNotFoundError as e:
        raise StateFileError(f"The {what} {path!r} does not exist.") from e
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise StateFileError(f"The {what} {path!r} is not valid JSON (damaged?): {e}") from e
    _check_tag(path, payload, format, max_version, what)
    return payload


def _check_tag(
    path: str, payload: Any, format: str | None, max_version: int | None, what: str
) -> None:
    if format is None:
        return
    found = payload.get("format") if isinstance(payload, Mapping) else None
    if found != format:
        raise StateFileError(
            f"The {what} {path!r} has format {found!r}; expected {format!r}. Is it the right file?"
        )
    version = payload.get("version", 1)
    if max_version is not None and int(version) > max_version:
        raise StateFileError(
            f"The {what} {path!r} has version {version}; this tfembsize reads up to version "
            f"{max_version}. Upgrade tfembsize to read it."
        )


def append_jsonl(path: str | os.PathLike[str], payload: Any) -> None:
    """Appends one JSON line to ``path`` and syncs it (a cut last line is the reader's to drop)."""
    with open(os.fspath(path), "a", encoding="utf-8") as f:
        f.write(json.dumps(payload) + "\n")
        f.flush()
        os.fsync(f.fileno())


def write_npz(
    path: str | os.PathLike[str],
    arrays: Mapping[str, Any],
    *,
    format: str | None = None,
    compress: bool = False,
) -> None:
    """Writes arrays to an ``.npz`` file atomically; tags it with ``format`` if given.

    Args:
        path: the target file.
        arrays: name -> array (no object arrays: the readers never unpickle).
        format: a format tag stored as the ``__format__`` entry.
        compress: use ``np.savez_compressed``.
    """
    if _NPZ_FORMAT_KEY in arrays:
        raise ValueError(f"`arrays` must not contain the reserved key {_NPZ_FORMAT_KEY!r}.")
    payload: dict[str, Any] = {str(k): np.asarray(v) for k, v in arrays.items()}
    for name, value in payload.items():
        if value.dtype == object:
            raise TypeError(f"Array {name!r} has dtype object; only plain arrays are saved.")
    if format is not None:
        payload[_NPZ_FORMAT_KEY] = np.array(format)
    buf = io.BytesIO()
    (np.savez_compressed if compress else np.savez)(buf, **payload)
    write_bytes(path, buf.getvalue())


def read_npz(
    path: str | os.PathLike[str], *, format: str | None = None, what: str = "file"
) -> dict[str, np.ndarray]:
    """Reads every array of an ``.npz`` written by `write_npz` (never unpickles).

    Args:
        path: the file.
        format: the expected ``__format__`` tag (None: not checked; the tag is dropped).
        what: what the file is, for error messages.

    Returns:
        name -> array, without the format tag.

    Raises:
        StateFileError: the file is missing, damaged, or has another format tag.
    """
    path = os.fspath(path)
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
    except FileNotFoundError as e:
        raise StateFileError(f"The {what} {path!r} does not exist.") from e
    except (zipfile.BadZipFile, ValueError, OSError, EOFError) as e:
        raise StateFileError(f"The {what} {path!r} is not a readable .npz file: {e}") from e
    tag = arrays.pop(_NPZ_FORMAT_KEY, None)
    found = None if tag is None else str(tag)
    if format is not None and found != format:
        raise StateFileError(
            f"The {what} {path!r} has format {found!r}; expected {format!r}. Is it the right file?"
        )
    return arrays


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
        """
        key = os.path.realpath(os.fspath(directory))
        directory = os.fspath(directory)
        n = len(self)
        done = self._flushed.get(key, 0)
        if n > done:
            # Chunks from this row on were written and never committed (a crash between a
            # flush and the caller's commit): drop them so every row has one chunk.
            if os.path.isdir(directory):
                for entry in os.listdir(directory):
                    if entry.endswith(".npz") and "-" in entry:
                        start = int(entry.split("-")[0])
                        if start >= done:
                            os.remove(os.path.join(directory, entry))
            chunk = {k: v[done:n] for k, v in self._data.items()}
            write_npz(os.path.join(directory, f"{done:012d}-{n:012d}.npz"), chunk)
            self._flushed[key] = n
        else:
            os.makedirs(directory, exist_ok=True)
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
        directory = os.fspath(directory)
        log = cls(fields)
        if length == 0:
            return log
        chunks = []
        names = sorted(os.listdir(directory)) if os.path.isdir(directory) else []
        for entry in names:
            if not entry.endswith(".npz") or "-" not in entry:
                continue
            start, stop = (int(x) for x in entry[:-4].split("-"))
            chunks.append((start, stop, entry))
        position = 0
        parts: dict[str, list[np.ndarray]] = {k: [] for k in log.fields}
        by_start = {c[0]: c for c in chunks}
        while position < length:
            if position not in by_start:
                raise StateFileError(
                    f"The array log in {directory!r} has no chunk starting at row {position}; "
                    f"{length} rows were committed. The run folder is damaged."
                )
            start, stop, entry = by_start[position]
            arrays = read_npz(os.path.join(directory, entry), what="array log chunk")
            take = min(stop, length) - start
            for k in log.fields:
                parts[k].append(arrays[k][:take])
            position = start + take
        for k in log.fields:
            log._data[k] = np.concatenate(parts[k]).astype(log.fields[k][1], copy=False)
        log._n = int(length)
        log._flushed = {os.path.realpath(directory): length}
        return log
