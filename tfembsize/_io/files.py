"""Atomic, synced, tagged, checksummed JSON and ``.npz`` files (see `tfembsize._io`)."""

from __future__ import annotations

import errno as _errno
import hashlib
import io
import json
import logging
import os
import re
from collections.abc import Mapping
from typing import Any

import numpy as np

from tfembsize.errors import StateFileError, StateWriteError

__all__ = [
    "append_jsonl",
    "read_json",
    "read_jsonl",
    "read_npz",
    "process_running",
    "remove_stale_temporaries",
    "write_bytes",
    "write_error",
    "write_json",
    "write_npz",
]

logger = logging.getLogger(__name__)

_NPZ_FORMAT_KEY = "__format__"
_NPZ_CHECKSUM_KEY = "__checksum__"
_CHECKSUM_KEY = "checksum"
_CHECKSUM_PREFIX = "sha256:"
_CHECKSUM_VALUE = re.compile(r"^sha256:[0-9a-f]{64}$")
_ZIP_MAGICS = (b"PK\x03\x04", b"PK\x05\x06")  # an archive with members / an empty one
_TEMPORARY = re.compile(r"^(?P<target>.+)\.tmp-(?P<pid>\d+)$")
DEFAULT_REMEDY = "Restore it from a backup, or delete it and the files written with it."
"""The way out a reader names when its caller gives none."""


# Writing -----------------------------------------------------------------------------------
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


def write_error(path: str | os.PathLike[str], error: OSError) -> StateWriteError:
    """The `StateWriteError` for an ``OSError`` raised while writing ``path``.

    The message names the path, the cause, and what to do about it (free space, write
    elsewhere, fix the permissions); ``errno`` is the original one.

    Args:
        path: the file or folder being written.
        error: the original error.
    """
    path = os.fspath(path)
    code = error.errno
    if code in (_errno.ENOSPC, getattr(_errno, "EDQUOT", -1)):
        cause = "the disk (or the quota) is full"
        remedy = "Free some space there, or write to another folder, and run again"
    elif code == _errno.EROFS:
        cause = "the file system is read-only"
        remedy = "Write to a folder on a writable disk, and run again"
    elif code in (_errno.EACCES, _errno.EPERM):
        cause = "permission denied"
        remedy = "Fix the folder's permissions, or write to another folder, and run again"
    else:
        cause = error.strerror or str(error)
        remedy = "Check the disk and the folder, and run again"
    message = (
        f"Cannot write {path!r}: {cause} ({type(error).__name__}: {error}). {remedy}; the "
        "previous version of the file, if there was one, is intact."
    )
    out = StateWriteError(code, message)
    out.path = path
    return out


def _remove_quietly(path: str) -> None:
    try:
        os.remove(path)
    except OSError:
        pass


def write_bytes(path: str | os.PathLike[str], data: bytes) -> None:
    """Writes ``data`` to ``path`` atomically (temporary file, fsync, rename, folder fsync).

    Args:
        path: the target file; its folder is created if missing.
        data: the bytes to write.

    Raises:
        tfembsize.errors.StateWriteError: the write failed (disk full, read-only, no
            permission); the temporary file is removed and the previous ``path`` is intact.
    """
    path = os.fspath(path)
    directory = os.path.dirname(path)
    tmp = f"{path}.tmp-{os.getpid()}"
    try:
        if directory:
            os.makedirs(directory, exist_ok=True)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o666)
        try:
            view = memoryview(data)
            while view.nbytes:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except OSError as e:
        _remove_quietly(tmp)
        raise write_error(path, e) from e
    except BaseException:
        _remove_quietly(tmp)
        raise
    _sync_directory(directory)


def _json_digest(payload: Mapping[str, Any]) -> str:
    """SHA-256 of a JSON mapping without its checksum entry (as decoded from the file)."""
    body = {k: v for k, v in payload.items() if k != _CHECKSUM_KEY}
    text = json.dumps(body, separators=(",", ":"), allow_nan=True)
    return _CHECKSUM_PREFIX + hashlib.sha256(text.encode("utf-8")).hexdigest()


def _with_checksum(payload: Any) -> Any:
    """The payload as it will read back, with its checksum entry (mappings only)."""
    if not isinstance(payload, Mapping):
        return payload
    if _CHECKSUM_KEY in payload:
        raise ValueError(
            f"A JSON payload must not contain the reserved key {_CHECKSUM_KEY!r} (the "
            "checksum the writer adds). Rename that entry."
        )
    # Round trip first, so the checksum is computed on what a reader decodes (string keys).
    decoded = json.loads(json.dumps(payload, allow_nan=True))
    decoded[_CHECKSUM_KEY] = _json_digest(decoded)
    return decoded


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

    A mapping also gets a ``"checksum"`` entry (the SHA-256 of the rest) that `read_json`
    verifies.

    Args:
        path: the target file.
        payload: JSON-serialisable data (a mapping when ``format`` is given); a mapping must
            not have a ``"checksum"`` key.
        format: a format tag, e.g. ``"tfembsize.SearchRun"``; stored as ``payload["format"]``.
        version: the format's version (default 1 when ``format`` is given).
        indent: JSON indentation (None for one line).

    Raises:
        tfembsize.errors.StateWriteError: the write failed (the previous file is intact).

    Example:
        >>> import tempfile, os
        >>> p = os.path.join(tempfile.mkdtemp(), "state.json")
        >>> write_json(p, {"step": 3}, format="example.State")
        >>> read_json(p, format="example.State")["step"]
        3
    """
    payload = _with_checksum(_tagged(payload, format, version))
    text = json.dumps(payload, indent=indent, allow_nan=True)
    write_bytes(path, text.encode("utf-8"))


def append_jsonl(path: str | os.PathLike[str], payload: Any) -> None:
    """Appends one JSON line to ``path`` and syncs it (a cut last line is the reader's to drop).

    A mapping gets a ``"checksum"`` entry, as in `write_json`.

    Raises:
        tfembsize.errors.StateWriteError: the write failed.
    """
    path = os.fspath(path)
    line = (json.dumps(_with_checksum(payload), allow_nan=True) + "\n").encode("utf-8")
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o666)
        try:
            view = memoryview(line)
            while view.nbytes:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError as e:
        raise write_error(path, e) from e


def _npz_digest(arrays: Mapping[str, np.ndarray]) -> str:
    """SHA-256 over every entry's name, dtype, shape and bytes, in name order."""
    h = hashlib.sha256()
    for name in sorted(arrays):
        if name == _NPZ_CHECKSUM_KEY:
            continue
        arr = np.ascontiguousarray(arrays[name])
        h.update(f"{name}\0{arr.dtype.str}\0{arr.shape}\0".encode())
        h.update(arr.tobytes())
    return _CHECKSUM_PREFIX + h.hexdigest()


def write_npz(
    path: str | os.PathLike[str],
    arrays: Mapping[str, Any],
    *,
    format: str | None = None,
    compress: bool = False,
) -> None:
    """Writes arrays to an ``.npz`` file atomically; tags it with ``format`` if given.

    A ``__checksum__`` entry (SHA-256 of every other entry) is added; `read_npz` verifies it.

    Args:
        path: the target file.
        arrays: name -> array (no object arrays: the readers never unpickle).
        format: a format tag stored as the ``__format__`` entry.
        compress: use ``np.savez_compressed``.

    Raises:
        tfembsize.errors.StateWriteError: the write failed (the previous file is intact).
    """
    for reserved in (_NPZ_FORMAT_KEY, _NPZ_CHECKSUM_KEY):
        if reserved in arrays:
            raise ValueError(f"`arrays` must not contain the reserved key {reserved!r}.")
    payload: dict[str, Any] = {str(k): np.asarray(v) for k, v in arrays.items()}
    for name, value in payload.items():
        if value.dtype == object:
            raise TypeError(f"Array {name!r} has dtype object; only plain arrays are saved.")
    if format is not None:
        payload[_NPZ_FORMAT_KEY] = np.array(format)
    payload[_NPZ_CHECKSUM_KEY] = np.array(_npz_digest(payload))
    buf = io.BytesIO()
    (np.savez_compressed if compress else np.savez)(buf, **payload)
    write_bytes(path, buf.getvalue())


# Reading -----------------------------------------------------------------------------------
def _read_raw(path: str, what: str, remedy: str) -> bytes:
    """The bytes of a state file; a missing, unreadable or empty one raises StateFileError."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except FileNotFoundError as e:
        raise StateFileError(f"The {what} {path!r} does not exist. {remedy}") from e
    except OSError as e:
        raise StateFileError(
            f"The {what} {path!r} cannot be read ({type(e).__name__}: {e}). Check that it is "
            "a file and that you may read it."
        ) from e
    if not data.strip():
        raise StateFileError(
            f"The {what} {path!r} is empty (a write was cut short, or the file was truncated). "
            f"{remedy}"
        )
    return data


def _verify_json(path: str, payload: Any, what: str, remedy: str, where: str = "") -> Any:
    """Checks and strips the checksum entry of a decoded mapping (others pass through)."""
    if not isinstance(payload, Mapping):
        return payload
    stored = payload.get(_CHECKSUM_KEY)
    if stored is None:
        # Written before checksums existed, unless the checksum's own key was damaged.
        for key, value in payload.items():
            if isinstance(value, str) and _CHECKSUM_VALUE.match(value):
                raise StateFileError(
                    f"The {what} {path!r}{where} has a damaged checksum entry ({key!r}). {remedy}"
                )
        return payload
    if stored != _json_digest(payload):
        raise StateFileError(
            f"The {what} {path!r}{where} does not match its checksum: it was edited or "
            f"damaged after it was written. {remedy}"
        )
    return {k: v for k, v in payload.items() if k != _CHECKSUM_KEY}


def read_json(
    path: str | os.PathLike[str],
    *,
    format: str | None = None,
    max_version: int | None = None,
    what: str = "file",
    remedy: str | None = None,
    untagged: bool = False,
) -> Any:
    """Reads a JSON file written by `write_json` and verifies its checksum (if it has one).

    Args:
        path: the file.
        format: the expected format tag (None: not checked).
        max_version: the newest version this reader understands (None: not checked).
        what: what the file is, for error messages (e.g. ``"search run state"``).
        remedy: the way out the error messages name (default `DEFAULT_REMEDY`).
        untagged: also accept a mapping without a format tag (files written before the
            format was tagged); a different tag is still refused.

    Returns:
        The decoded payload, without its checksum entry.

    Raises:
        StateFileError: the file is missing, empty, not valid JSON, does not match its
            checksum, or has another format tag or a newer version; the message names the
            path and the way out.
    """
    path = os.fspath(path)
    remedy = remedy or DEFAULT_REMEDY
    data = _read_raw(path, what, remedy)
    try:
        payload = json.loads(data.decode("utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise StateFileError(
            f"The {what} {path!r} is not valid JSON (damaged or truncated: {e}). {remedy}"
        ) from e
    payload = _verify_json(path, payload, what, remedy)
    _check_tag(path, payload, format, max_version, what, remedy, untagged)
    return payload


def read_jsonl(
    path: str | os.PathLike[str],
    count: int,
    *,
    what: str = "log",
    remedy: str | None = None,
) -> list[Any]:
    """The first ``count`` lines of a log written by `append_jsonl`, each verified.

    Lines past ``count`` (not committed yet, possibly cut by a crash) are not read.

    Args:
        path: the file.
        count: how many lines were committed (the caller's state file records it).
        what: what the file is, for error messages.
        remedy: the way out the error messages name (default `DEFAULT_REMEDY`).

    Raises:
        StateFileError: the file is missing or holds fewer than ``count`` lines, or one of
            them is not valid JSON or does not match its checksum (the message names the path,
            the 1-based line and the way out).
    """
    path = os.fspath(path)
    remedy = remedy or DEFAULT_REMEDY
    if count <= 0:
        return []
    data = _read_raw(path, what, remedy)
    raw = [line for line in data.split(b"\n") if line.strip()]
    if len(raw) < count:
        raise StateFileError(
            f"The {what} {path!r} holds {len(raw)} lines but {count} were committed (it was "
            f"truncated). {remedy}"
        )
    out = []
    for number, line in enumerate(raw[:count], start=1):
        where = f", line {number},"
        try:
            payload = json.loads(line.decode("utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise StateFileError(
                f"The {what} {path!r}{where} is not valid JSON (damaged: {e}). {remedy}"
            ) from e
        out.append(_verify_json(path, payload, what, remedy, where))
    return out


def _wrong_format(path: str, found: Any, format: str, what: str, remedy: str) -> StateFileError:
    return StateFileError(
        f"The {what} {path!r} has format {found!r}; expected {format!r}. Is it the right "
        f"file? {remedy}"
    )


def _check_tag(
    path: str,
    payload: Any,
    format: str | None,
    max_version: int | None,
    what: str,
    remedy: str,
    untagged: bool = False,
) -> None:
    if format is None:
        return
    found = payload.get("format") if isinstance(payload, Mapping) else None
    if found is None and untagged and isinstance(payload, Mapping):
        return
    if found != format:
        raise _wrong_format(path, found, format, what, remedy)
    version = payload.get("version", 1)
    if isinstance(version, bool) or not isinstance(version, int):
        raise StateFileError(
            f"The {what} {path!r} has version {version!r}, not an integer (damaged?). {remedy}"
        )
    if max_version is not None and version > max_version:
        raise StateFileError(
            f"The {what} {path!r} has version {version}; this tfembsize reads up to version "
            f"{max_version}. Upgrade tfembsize to read it."
        )


def read_npz(
    path: str | os.PathLike[str],
    *,
    format: str | None = None,
    what: str = "file",
    remedy: str | None = None,
    untagged: bool = False,
) -> dict[str, np.ndarray]:
    """Reads every array of an ``.npz`` written by `write_npz` (never unpickles).

    The ``__checksum__`` entry, if there is one, is verified.

    Args:
        path: the file.
        format: the expected ``__format__`` tag (None: not checked; the tag is dropped).
        what: what the file is, for error messages.
        remedy: the way out the error messages name (default `DEFAULT_REMEDY`).
        untagged: also accept a file without a format tag (written before the format was
            tagged); a different tag is still refused.

    Returns:
        name -> array, without the format tag and the checksum.

    Raises:
        StateFileError: the file is missing, empty, not an ``.npz`` archive, damaged, does
            not match its checksum, or has another format tag; the message names the path
            and the way out.
    """
    path = os.fspath(path)
    remedy = remedy or DEFAULT_REMEDY
    data = _read_raw(path, what, remedy)
    if not data.startswith(_ZIP_MAGICS):
        raise StateFileError(
            f"The {what} {path!r} is not an .npz archive (it does not start like one: damaged "
            f"or overwritten). {remedy}"
        )
    try:
        with np.load(io.BytesIO(data), allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
    except Exception as e:  # any failure to parse the archive means it is damaged
        raise StateFileError(
            f"The {what} {path!r} is a damaged .npz archive ({type(e).__name__}: {e}). {remedy}"
        ) from e
    stored = arrays.pop(_NPZ_CHECKSUM_KEY, None)
    if stored is not None and str(stored) != _npz_digest(arrays):
        raise StateFileError(
            f"The {what} {path!r} does not match its checksum: it was edited or damaged after "
            f"it was written. {remedy}"
        )
    tag = arrays.pop(_NPZ_FORMAT_KEY, None)
    found = None if tag is None else str(tag)
    if format is not None and found != format and not (found is None and untagged):
        raise _wrong_format(path, found, format, what, remedy)
    return arrays


# Leftovers of interrupted writes -----------------------------------------------------------
def process_running(pid: int) -> bool:
    """False only when no process ``pid`` runs on this machine (unknown counts as running)."""
    if os.name != "posix" or pid <= 0:
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (OSError, OverflowError, ValueError):
        return True
    return True


def remove_stale_temporaries(
    directory: str | os.PathLike[str], *, recursive: bool = False
) -> list[str]:
    """Deletes the temporary files ``<name>.tmp-<pid>`` of writes that can never finish.

    A temporary file is stale, and removed, when its writer process no longer runs on this
    machine, or when it is older than the committed ``<name>`` beside it. The committed files
    are never touched.

    Args:
        directory: the folder to clean (a missing folder is left alone).
        recursive: also clean every folder below it.

    Returns:
        The paths removed.
    """
    directory = os.fspath(directory)
    if not os.path.isdir(directory):
        return []
    removed = []
    walk = os.walk(directory) if recursive else [(directory, [], os.listdir(directory))]
    for folder, _, names in walk:
        for name in names:
            m = _TEMPORARY.match(name)
            if m is None:
                continue
            tmp = os.path.join(folder, name)
            target = os.path.join(folder, m.group("target"))
            try:
                if not os.path.isfile(tmp):
                    continue
                stale = not process_running(int(m.group("pid"))) or (
                    os.path.isfile(target) and os.path.getmtime(tmp) < os.path.getmtime(target)
                )
                if stale:
                    os.remove(tmp)
                    removed.append(tmp)
            except OSError:
                continue
    if removed:
        logger.info("Removed %d leftover temporary files in %s.", len(removed), directory)
    return removed
