"""Exceptions raised by tfembsize."""

from __future__ import annotations

__all__ = ["BudgetExceededError", "BudgetInfeasibleError", "StateFileError"]


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

    The message names the file's path.
    """


class TargetMissedError(RuntimeError):
    """A search found no result within a target's budget (the budget is never relaxed)."""
