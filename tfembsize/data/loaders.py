"""Loaders for the standard implicit-feedback data sets (LightGCN text files, MovieLens).

The files are parsed with vectorised numpy over the raw bytes (no per-line Python loop), so
Gowalla (1M pairs) loads in well under a second and ML-1M (24 MB) in about a second. The parser
is strict: any unexpected character, empty field or wrong field count raises
`MalformedFileError` naming the file and the 1-based line number.

Every loader returns an `Interactions` with contiguous ids over the users and items that occur
(so N, the row count of the budget, counts the rows that appear: ML-1M has 3,706 rated movies
out of an id range of 3,952, and a table over the raw id range would carry 246 unused rows and
a larger budget). Repeated (user, item) pairs, which a rating file or a train/test pair of files may
contain, are kept once; the number dropped is logged and stored in
``Interactions.duplicates_removed``.
"""

from __future__ import annotations

import gzip
import logging
import os
from pathlib import Path
from typing import Any

import numpy as np

from tfembsize.data.interactions import Interactions

__all__ = [
    "EmptyDataFileError",
    "MalformedFileError",
    "load_lightgcn",
    "load_movielens",
    "load_dataset",
    "default_data_root",
    "DATASETS",
]

logger = logging.getLogger(__name__)

DATASETS = ("gowalla", "ml-1m", "ml-100k", "synthetic")
"""Names `load_dataset` knows; other names are looked up as folders under the data root."""

_LIGHTGCN_FILES = ("train.txt", "test.txt")
_MOVIELENS_FILES = ("ratings.dat", "u.data")
_MAX_DIGITS = 18  # int64 holds every 18-digit number


class MalformedFileError(ValueError):
    """A data file has a line the loader cannot parse.

    Attributes:
        path: the file.
        line_number: 1-based line number.
        line: the offending line (decoded, at most 200 characters).
        reason: what is wrong with it.
    """

    def __init__(self, path: str, line_number: int, line: str, reason: str) -> None:
        self.path = path
        self.line_number = line_number
        self.line = line
        self.reason = reason
        super().__init__(f"{path}, line {line_number}: {reason}. Line: {line!r}")


class EmptyDataFileError(ValueError):
    """A training file (LightGCN ``train.txt``, MovieLens ratings) holds no interactions.

    Attributes:
        path: the file.
    """

    def __init__(self, message: str, path: str = "") -> None:
        super().__init__(message)
        self.path = path


# File access ------------------------------------------------------------------------------
def _read_bytes(path: Path) -> bytes:
    """Reads a file, transparently decompressing ``.gz``."""
    if path.suffix == ".gz":
        with gzip.open(path, "rb") as f:
            return f.read()
    return path.read_bytes()


def _find(directory: Path, stem: str) -> Path | None:
    """``directory/stem`` or ``directory/stem.gz`` (plain preferred), or None."""
    for candidate in (directory / stem, directory / f"{stem}.gz"):
        if candidate.is_file():
            return candidate
    return None


def default_data_root() -> Path:
    """Where `load_dataset` looks for named data sets.

    The environment variable ``TFEMBSIZE_DATA_DIR`` if set, else ``../shared/data`` relative to
    the repository (the folder holding the ``tfembsize`` package).
    """
    env = os.environ.get("TFEMBSIZE_DATA_DIR")
    if env:
        return Path(env)
    repo = Path(__file__).resolve().parents[2]
    return repo.parent / "shared" / "data"


# Vectorised parsing ------------------------------------------------------------------------
class _Lines:
    """Line lookup for error messages over a byte buffer."""

    def __init__(self, data: bytes, buf: np.ndarray, path: str) -> None:
        self.data = data
        self.path = path
        self.newlines = np.flatnonzero(buf == 10)

    def line_of(self, pos: int | np.ndarray) -> Any:
        """0-based line index of byte position(s)."""
        return np.searchsorted(self.newlines, pos, side="left")

    def error(self, pos: int, reason: str) -> MalformedFileError:
        line = int(self.line_of(pos))
        start = int(self.newlines[line - 1]) + 1 if line > 0 else 0
        end = int(self.newlines[line]) if line < self.newlines.size else len(self.data)
        text = self.data[start:end].decode("utf-8", errors="replace")
        if len(text) > 200:
            text = text[:200] + "..."
        return MalformedFileError(self.path, line + 1, text, reason)


def _token_bounds(is_tok: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Start and end (inclusive) positions of maximal runs of True."""
    padded = np.concatenate(([False], is_tok, [False]))
    edges = np.flatnonzero(padded[1:] != padded[:-1])
    return edges[0::2], edges[1::2] - 1


def _parse_ints(buf: np.ndarray, starts: np.ndarray, ends: np.ndarray, lines: _Lines) -> np.ndarray:
    """Values of the digit-only tokens ``buf[starts[j]:ends[j] + 1]`` (int64)."""
    lengths = ends - starts + 1
    if lengths.size == 0:
        return np.zeros(0, dtype=np.int64)
    too_long = np.flatnonzero(lengths > _MAX_DIGITS)
    if too_long.size:
        raise lines.error(int(starts[too_long[0]]), f"number longer than {_MAX_DIGITS} digits")
    values = np.zeros(starts.size, dtype=np.int64)
    active = np.arange(starts.size)
    for j in range(int(lengths.max())):  # Horner's rule over the tokens still having digits
        active = active[lengths[active] > j]
        digit = buf[starts[active] + j].astype(np.int64) - 48
        values[active] = values[active] * 10 + digit
    return values


def _tokens_whitespace(data: bytes, path: str) -> tuple[np.ndarray, np.ndarray]:
    """Parses lines of whitespace-separated non-negative integers.

    Returns:
        ``(values, line)``: every integer in file order and its 0-based line index.
    """
    buf = np.frombuffer(data, dtype=np.uint8)
    lines = _Lines(data, buf, path)
    is_digit = (buf >= 48) & (buf <= 57)
    allowed = is_digit | (buf == 10) | (buf == 32) | (buf == 9) | (buf == 13)
    if not allowed.all():
        pos = int(np.argmin(allowed))
        raise lines.error(pos, f"unexpected character {chr(buf[pos])!r} (expected integers)")
    starts, ends = _token_bounds(is_digit)
    return _parse_ints(buf, starts, ends, lines), lines.line_of(starts)


def _fields_separated(
    data: bytes,
    path: str,
    sep: bytes,
    num_fields: int,
    int_fields: int,
    int_names: str = "id fields",
) -> np.ndarray:
    """Parses lines of exactly ``num_fields`` fields separated by ``sep``.

    Fields hold digits and ``.``; the first ``int_fields`` must be non-negative integers
    (``int_names`` names them in the error).
    Empty lines are skipped; CRLF line ends are accepted.

    Returns:
        int64 array ``[num_lines, int_fields]`` of the integer fields.
    """
    if b"\r" in data:
        data = data.replace(b"\r\n", b"\n")
    marker = 0x1F
    if len(sep) != 1:
        unit = data.find(bytes([marker]))
        if unit >= 0:
            buf = np.frombuffer(data, dtype=np.uint8)
            raise _Lines(data, buf, path).error(unit, "unexpected control character 0x1f")
        data = data.replace(sep, bytes([marker]))
    else:
        marker = sep[0]
    if data and not data.endswith(b"\n"):
        data += b"\n"
    buf = np.frombuffer(data, dtype=np.uint8)
    lines = _Lines(data, buf, path)
    token_char = np.zeros(256, dtype=bool)
    token_char[48:58] = True
    token_char[46] = True  # "." (ratings such as 4.5)
    allowed = token_char.copy()
    allowed[[marker, 10]] = True
    ok = allowed[buf]
    if not ok.all():
        pos = int(np.argmin(ok))
        raise lines.error(pos, f"unexpected character {data[pos : pos + 1].decode('latin-1')!r}")
    seps = np.flatnonzero(buf == marker)
    if seps.size:
        # A separator between two field characters; anything else leaves an empty field.
        before = token_char[buf[np.maximum(seps - 1, 0)]] & (seps > 0)
        after = token_char[buf[seps + 1]]  # the buffer ends with a newline
        good = before & after
        if not good.all():
            raise lines.error(int(seps[np.argmin(good)]), "empty field")
    # Each line runs from `line_start` to its newline; count the separators inside.
    nl = lines.newlines
    line_start = np.concatenate(([0], nl[:-1] + 1))
    first_sep = np.searchsorted(seps, line_start)
    num_seps = np.searchsorted(seps, nl) - first_sep
    nonempty = nl > line_start  # empty lines are skipped
    wrong = np.flatnonzero(nonempty & (num_seps != num_fields - 1))
    if wrong.size:
        j = wrong[0]
        raise lines.error(
            int(line_start[j]),
            f"expected {num_fields} fields separated by {sep.decode()!r}, found {num_seps[j] + 1}",
        )
    first_sep = first_sep[nonempty]
    starts = np.empty((first_sep.size, int_fields), dtype=np.int64)
    ends = np.empty_like(starts)
    starts[:, 0] = line_start[nonempty]
    for f in range(int_fields):
        if f:
            starts[:, f] = seps[first_sep + f - 1] + 1
        if f == num_fields - 1:  # the last field ends at its line's newline
            ends[:, f] = nl[nonempty] - 1
        else:
            ends[:, f] = seps[first_sep + f] - 1
    if b"." in data:
        dots = np.flatnonzero(buf == 46)
        limit = np.full(nl.size, -1, dtype=np.int64)
        limit[nonempty] = ends[:, -1]
        inside = dots <= limit[np.searchsorted(nl, dots)]
        if inside.any():
            raise lines.error(int(dots[np.argmax(inside)]), f"{int_names} must be integers")
    values = _parse_ints(buf, starts.reshape(-1), ends.reshape(-1), lines)
    return values.reshape(-1, int_fields)


# Public loaders ----------------------------------------------------------------------------
def _lightgcn_pairs(path: Path) -> tuple[np.ndarray, np.ndarray]:
    values, line = _tokens_whitespace(_read_bytes(path), str(path))
    if values.size == 0:
        return values, values
    first = np.ones(values.size, dtype=bool)
    first[1:] = line[1:] != line[:-1]
    owner = values[np.flatnonzero(first)][np.cumsum(first) - 1]
    return owner[~first], values[~first]


def load_lightgcn(directory: str | os.PathLike, *, name: str | None = None) -> Interactions:
    """Loads a data set in the LightGCN format and merges its train and test files.

    The folder holds ``train.txt`` and ``test.txt`` (or ``.gz`` copies), one line per user:
    ``user_id item_id item_id ...`` separated by whitespace. As in the CIESS and BET papers,
    both files are merged and re-split later with `Interactions.split`. A line with a user id
    and no items is allowed and adds nothing. A missing ``test.txt`` is allowed (the data is
    then ``train.txt`` alone).

    Args:
        directory: the folder (e.g. ``.../shared/data/gowalla``).
        name: a label; defaults to the folder name.

    Returns:
        The merged interactions (Gowalla: 29,858 users, 40,981 items, 1,027,370 pairs).

    Raises:
        FileNotFoundError: when the folder has no ``train.txt[.gz]``.
        MalformedFileError: on a line that is not a list of non-negative integers.
        EmptyDataFileError: ``train.txt`` holds no (user, item) pair (empty, whitespace only,
            or user ids without items).

    Example:
        >>> data = load_lightgcn(default_data_root() / "gowalla")  # doctest: +SKIP
        >>> data.num_users, data.num_items, data.num_interactions  # doctest: +SKIP
        (29858, 40981, 1027370)
    """
    directory = Path(directory)
    train = _find(directory, "train.txt")
    if train is None:
        raise FileNotFoundError(
            f"`directory` must hold train.txt or train.txt.gz (LightGCN format). Received: "
            f"directory={os.fspath(directory)!r}"
        )
    files = [train]
    test = _find(directory, "test.txt")
    if test is not None:
        files.append(test)
    else:
        logger.warning("%s has no test.txt[.gz]; using train.txt alone.", directory)
    pairs = [_lightgcn_pairs(p) for p in files]
    _refuse_empty(train, pairs[0][0].size)
    users = np.concatenate([u for u, _ in pairs])
    items = np.concatenate([i for _, i in pairs])
    data = Interactions.from_raw(users, items, name=name or directory.name)
    _log_loaded(data, files)
    return data


def _movielens_file(path: Path) -> Path:
    if path.is_dir():
        for stem in _MOVIELENS_FILES:
            found = _find(path, stem)
            if found is not None:
                return found
        raise FileNotFoundError(
            f"`path` must be a MovieLens ratings file or a folder holding ratings.dat[.gz] "
            f"(ML-1M) or u.data[.gz] (ML-100K). Received: path={os.fspath(path)!r}"
        )
    if not path.is_file():
        raise FileNotFoundError(f"No such MovieLens file. Received: path={os.fspath(path)!r}")
    return path


def load_movielens(path: str | os.PathLike, *, name: str | None = None) -> Interactions:
    """Loads MovieLens ratings, every rating as an implicit positive (as the CIESS paper).

    Reads ML-1M's ``ratings.dat`` (``UserID::MovieID::Rating::Timestamp``) and ML-100K's
    ``u.data`` (``user<TAB>item<TAB>rating<TAB>timestamp``), plain or ``.gz``. The separator is
    chosen from the file name (``ratings.dat`` -> ``::``, ``u.data`` -> tab) or, for other
    names, from the first line. Every line is a rating: the first line is *not* skipped (the
    official CIESS code drops it by mistake, which loses one rating).

    Args:
        path: the ratings file, or a folder holding ``ratings.dat[.gz]`` or ``u.data[.gz]``.
        name: a label; defaults to the folder name.

    Returns:
        The interactions over the users and movies that have ratings (ML-1M: 6,040 users,
        3,706 movies, 1,000,209 pairs; raw 1-based ids in ``user_ids`` / ``item_ids``).

    Raises:
        FileNotFoundError: when no ratings file is found.
        MalformedFileError: on a line without 4 fields or with a non-integer id.
        EmptyDataFileError: the ratings file holds no rating (empty or whitespace only).

    Example:
        >>> data = load_movielens(default_data_root() / "ml-100k")  # doctest: +SKIP
        >>> data.num_users, data.num_items, data.num_interactions  # doctest: +SKIP
        (943, 1682, 100000)
    """
    file = _movielens_file(Path(path))
    fields = _movielens_fields(file, int_fields=2)
    result = Interactions.from_raw(fields[:, 0], fields[:, 1], name=name or file.parent.name)
    _log_loaded(result, [file])
    return result


def _movielens_fields(file: Path, int_fields: int, int_names: str = "id fields") -> np.ndarray:
    """The first ``int_fields`` integer fields of every line of a MovieLens ratings file.

    The separator is chosen from the file name (``ratings.dat`` -> ``::``, ``u.data`` ->
    tab) or, for other names, from the first line.

    Raises:
        MalformedFileError: on a line without 4 fields or with a non-integer field.
        EmptyDataFileError: the file holds no rating.
    """
    data = _read_bytes(file)
    if not data.strip():
        _refuse_empty(file, 0)
    base = file.name[:-3] if file.name.endswith(".gz") else file.name
    if base == "ratings.dat":
        sep = b"::"
    elif base == "u.data":
        sep = b"\t"
    else:
        first_line = data[: data.find(b"\n")] if b"\n" in data else data
        sep = b"::" if b"::" in first_line else b"\t"
    fields = _fields_separated(data, str(file), sep, 4, int_fields, int_names)
    _refuse_empty(file, fields.shape[0])
    return fields


def _refuse_empty(path: Path, num_pairs: int) -> None:
    """Raises `EmptyDataFileError` when a training file holds no (user, item) pair."""
    if num_pairs == 0:
        raise EmptyDataFileError(
            f"{os.fspath(path)!r} holds no (user, item) pairs: it is empty, holds only "
            "whitespace, or lists users without items. A data set needs its training "
            "interactions: download or copy the file again.",
            os.fspath(path),
        )


def _log_loaded(data: Interactions, files: list[Path]) -> None:
    if data.duplicates_removed:
        logger.warning(
            "%s: %d repeated (user, item) pairs kept once.",
            ", ".join(map(str, files)),
            data.duplicates_removed,
        )
    logger.info("Loaded %r from %s.", data, ", ".join(map(str, files)))


def _load_path(path: Path, name: str | None) -> Interactions:
    if path.is_dir():
        if _find(path, "train.txt") is not None:
            return load_lightgcn(path, name=name)
        if any(_find(path, s) is not None for s in _MOVIELENS_FILES):
            return load_movielens(path, name=name)
        raise FileNotFoundError(
            f"{os.fspath(path)!r} holds neither LightGCN files (train.txt[.gz], test.txt[.gz]) "
            "nor MovieLens ratings (ratings.dat[.gz], u.data[.gz])."
        )
    return load_movielens(path, name=name)


def load_dataset(
    name_or_dir: str | os.PathLike, data_root: str | os.PathLike | None = None
) -> Interactions:
    """Loads a data set by name or from a folder.

    Names: ``"gowalla"`` (LightGCN format), ``"ml-1m"``, ``"ml-100k"`` (MovieLens), each
    resolved under ``data_root``; ``"synthetic"`` (`synthetic` with its defaults, no files
    needed). Any other value is a path: a folder in LightGCN format, a folder with MovieLens
    ratings, or a ratings file; a bare name that is a folder under ``data_root`` (for instance
    ``"yelp2018"`` in LightGCN format) also works.

    Args:
        name_or_dir: a name or a path.
        data_root: folder holding the named data sets; defaults to `default_data_root`
            (``$TFEMBSIZE_DATA_DIR``, else ``../shared/data`` next to the repository).

    Returns:
        The interactions.

    Raises:
        FileNotFoundError: when the data set is not found (the message says where it looked).

    Example:
        >>> split = load_dataset("synthetic").split(0.5, 0.25, 0.25, seed=42)
    """
    if isinstance(name_or_dir, str) and name_or_dir.strip().lower() == "synthetic":
        from tfembsize.data.synthetic import synthetic

        return synthetic()
    root = Path(data_root) if data_root is not None else default_data_root()
    key = os.fspath(name_or_dir)
    if key.strip().lower() in DATASETS:
        folder = root / key.strip().lower()
        if not folder.is_dir():
            raise FileNotFoundError(
                f"Data set {key!r} not found: {os.fspath(folder)!r} does not exist. Pass "
                "`data_root=` or set TFEMBSIZE_DATA_DIR to the folder holding gowalla/, "
                "ml-1m/ and ml-100k/."
            )
        return _load_path(folder, key.strip().lower())
    path = Path(key)
    if path.exists():
        return _load_path(path, None)
    if (root / key).is_dir():
        return _load_path(root / key, key)
    raise FileNotFoundError(
        f"`name_or_dir` must be one of {DATASETS} or an existing path. Received: "
        f"name_or_dir={key!r} (also looked for {os.fspath(root / key)!r})"
    )
