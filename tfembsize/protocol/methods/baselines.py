"""Built-in methods of the paper protocol: ``full``, ``es``, ``mr``, ``frequency``, BET and PEP.

The baselines go through the same ask/tell interface as the search methods: the method
builds the controller (`tfembsize.controllers.ES`, `MR`, `FrequencyProportional`) for the
cell's sparsity and seed, asks it once with the cell's `Observation`, and returns the plan.
``bet``, ``bet-random`` and ``bet-sizes-only`` are BET and its two ablations
(`tfembsize.protocol.bet`). ``pep`` is PEP's prune-then-retrain recipe
(`tfembsize.protocol.pep`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from tfembsize.protocol.registry import register_method
from tfembsize.protocol.runner import MethodContext, MethodOutput

__all__ = ["full_size", "controller_method"]


@register_method("full", budgeted=False, description="every row at full width d_max (no budget)")
def full_size(context: MethodContext) -> MethodOutput:
    """The full-size model: no plan, every row keeps all ``d_max`` coordinates."""
    del context
    return MethodOutput(plan=None, info={"d": "d_max"})


def controller_method(factory: Callable[..., Any]) -> Callable[[MethodContext], MethodOutput]:
    """A method that asks a static controller once for the cell's sparsity and seed.

    Args:
        factory: ``factory(sparsity=c, seed=s)`` returning a `tfembsize.controllers.Controller`
            whose first decision is the plan to retrain (ES, MR, FrequencyProportional).

    Returns:
        The method function.
    """

    def method(context: MethodContext) -> MethodOutput:
        controller = factory(sparsity=context.sparsity, seed=context.seed)
        decision = controller.ask(context.observation())
        return MethodOutput(
            plan=decision.plan,
            info={"controller": type(controller).__name__, "config": controller.get_config()},
        )

    return method


def _es(**kwargs: Any) -> Any:
    from tfembsize.controllers.baselines import ES

    return ES(**kwargs)


def _mr(**kwargs: Any) -> Any:
    from tfembsize.controllers.baselines import MR

    return MR(**kwargs)


def _frequency(**kwargs: Any) -> Any:
    from tfembsize.controllers.baselines import FrequencyProportional

    return FrequencyProportional(**kwargs)


register_method(
    "es",
    controller_method(_es),
    description="uniform size floor((1-c) d_max) for every entity (SU/ES)",
)
register_method("mr", controller_method(_mr), description="random sizes under the budget (SR/MR)")
register_method(
    "frequency",
    controller_method(_frequency),
    description="sizes proportional to training frequency",
)


def _register_bet() -> None:
    from tfembsize.protocol.bet import BET_VARIANTS, bet_method

    descriptions = {
        "bet": "BET: budgeted whole-table search with a DeepSets predictor (one search per "
        "seed for all sparsities; top-5 retraining)",
        "bet-random": "BET ablation: random candidate selection (no predictor)",
        "bet-sizes-only": "BET ablation: the predictor sees only the sizes (no frequencies)",
    }
    for name, variant in BET_VARIANTS.items():
        register_method(name, bet_method(**variant), description=descriptions[name])


_register_bet()


def _register_pep() -> None:
    from tfembsize.protocol.pep import pep_method

    register_method(
        "pep",
        pep_method,
        description="PEP: learnable soft thresholds (one pruning run per seed captures every "
        "sparsity's mask), lottery-ticket retraining",
    )


_register_pep()
