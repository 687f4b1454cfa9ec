"""Selective retraining in the protocol: a search's shortlist retrained, resumably, one winner."""

from __future__ import annotations

from typing import Any

from tfembsize.plan import SizePlan
from tfembsize.protocol.context import MethodContext, Retrained
from tfembsize.records import Feedback
from tfembsize.search.selection import Retraining, Shortlist, retrain_shortlist

__all__ = ["retrain_top"]


def retrain_top(
    ctx: MethodContext,
    short: Shortlist,
    directory: str,
    *,
    monitor: str,
    reference: Feedback | None = None,
    label: str = "",
) -> tuple[list[dict], int, Retrained]:
    """Retrains a shortlist under the protocol, resumably; returns (records, best rank, model).

    Each plan is retrained from scratch with the protocol's recipe (`MethodContext.retrain`:
    early stopping on validation, best weights restored) by
    `tfembsize.search.selection.retrain_shortlist`, which keeps ``directory/retraining.json``
    and the per-candidate files, so a killed run resumes without retraining a finished
    candidate. The winner is the highest validation ``monitor`` value, ties to the better
    search rank.

    Args:
        ctx: the cell's context.
        short: the shortlist to retrain (not missed).
        directory: where the retraining files live.
        monitor: what the winner is chosen by (see `tfembsize.search.selection.selection_value`).
        reference: the full-size model's validation feedback; with it the retrained models'
            validation feedback gets per-entity quality ratios (needed by
            ``monitor="entity_ratio"``).
        label: a prefix for log lines.

    Raises:
        FloatingPointError: no retrained candidate has a finite validation value.
    """

    def retrain(plan: SizePlan) -> Retraining:
        retrained = ctx.retrain(plan)
        validation = retrained.validation
        if reference is not None:
            validation = validation.with_reference(reference)
        return Retraining(
            validation=validation,
            model=retrained.model,
            details={
                "usable_params": retrained.usable_params,
                "num_rows": retrained.num_rows,
                "best_step": retrained.best_step,
                "train_steps": retrained.train_steps,
                "wall_time": retrained.wall_time,
            },
        )

    def build(plan: SizePlan) -> Any:
        model = ctx.build_model()
        plan.apply(model)
        return model

    selection = retrain_shortlist(
        short, retrain, directory, monitor=monitor, build=build, label=label
    )
    records = [dict(r) for r in selection.records]
    if selection.winner is None or selection.result is None:
        raise FloatingPointError(f"{label}: no retrained candidate has a finite validation score.")
    result, d = selection.result, selection.result.details
    best = Retrained(
        model=result.model,
        validation=result.validation,
        best_step=d["best_step"],
        train_steps=d["train_steps"],
        wall_time=d["wall_time"],
        usable_params=d["usable_params"],
        num_rows=d["num_rows"],
    )
    return records, selection.winner, best
