"""The one persistence toolkit: atomic, synced, tagged, checksummed JSON and ``.npz`` files.

Every file the library writes for a run (search state, protocol cells, training checkpoints,
controller state) goes through these functions, so every write is

* **atomic**: written to a temporary file ``<name>.tmp-<pid>`` in the same folder, flushed,
  ``fsync``-ed, then renamed over the target (``os.replace``), and the folder itself is synced,
  so a crash at any moment leaves either the old file or the new one, never a torn one;
* **checked on failure**: an ``OSError`` while writing (disk full, read-only file system, no
  permission) removes the temporary file, leaves the previous file untouched and is raised
  again as `tfembsize.errors.StateWriteError` naming the path and what to do;
* **tagged** (when asked): a JSON payload gets ``"format"`` and ``"version"`` keys and an
  ``.npz`` a ``__format__`` entry, and the readers check them, so a file of another kind is
  refused with a clear error instead of being misread;
* **checksummed**: a JSON mapping (a whole file, or one line of a ``.jsonl`` log) carries a
  ``"checksum"`` entry and an ``.npz`` a ``__checksum__`` entry, the SHA-256 of everything
  else in it; the readers recompute it, so a value edited or damaged after the write is
  detected. Files written before checksums existed (without the entry) are still read;
* **never pickled**: ``.npz`` files are read with ``allow_pickle=False``.

Large arrays that grow during a run (a replay buffer, an archive of actions) do not belong in
a state file rewritten after every step: `AppendOnlyArrays` keeps them as numbered chunk
files, each written once, and a reader takes the rows up to a committed length recorded in
the (small, atomically replaced) state file.

Readers raise `tfembsize.errors.StateFileError` naming the path and the way out for a
missing, empty, damaged, edited or foreign file. `remove_stale_temporaries` deletes the
temporary files of writes that were interrupted by a crash.
"""

from tfembsize._io.arraylog import AppendOnlyArrays
from tfembsize._io.files import (
    DEFAULT_REMEDY,
    append_jsonl,
    process_running,
    read_json,
    read_jsonl,
    read_npz,
    remove_stale_temporaries,
    write_bytes,
    write_error,
    write_json,
    write_npz,
)

__all__ = [
    "DEFAULT_REMEDY",
    "AppendOnlyArrays",
    "append_jsonl",
    "read_json",
    "read_jsonl",
    "process_running",
    "read_npz",
    "remove_stale_temporaries",
    "write_bytes",
    "write_error",
    "write_json",
    "write_npz",
]
