"""Exceptions raised by tfembsize."""

from __future__ import annotations

__all__ = [
    "BudgetExceededError",
    "BudgetInfeasibleError",
    "StateFileError",
    "StateWriteError",
    "TargetMissedError",
]


class BudgetExceededError(ValueError):
    """A size plan or size vector uses more parameters than its budget allows.

    Attributes:
        used: usable parameters of the rejected sizes.
        limit: the budget's parameter limit.
    """

    def __init__(self, message: str, *, used: int, limit: int) -> None:
        super().__init__(message)
        self.used = int(used)
        self.limit = int(limit)

    @property
    def excess(self) -> int:
        """Parameters over the budget."""
        return self.used - self.limit


class BudgetInfeasibleError(ValueError):
    """No size vector within the bounds can satisfy the budget (min_size * rows > budget)."""


class StateFileError(ValueError):
    """A saved file (run state, plan, checkpoint) is missing, damaged or of another kind.

    Raised for a file that is missing, empty, truncated, not valid JSON or ``.npz``, edited
    after it was written (its checksum does not match), of another format, or inconsistent
    with the files written with it. The message names the file's path and the way out.
    """


class StateWriteError(OSError):
    """A file could not be written: the disk is full, read-only, or permission is denied.

    ``errno`` is the underlying error's; the message names the path and what to do. The
    write was atomic, so the file's previous version, if any, is intact.

    Attributes:
        path: the file (or folder) that could not be written.
    """

    path: str = ""


class TargetMissedError(RuntimeError):
    """A search found no result within a target's budget (the budget is never relaxed)."""
