"""The baseline methods of the paper protocol: ``full``, ``es``, ``mr`` and ``frequency``.

The baselines go through the same ask/tell interface as the search methods: the method
builds the controller (`tfembsize.controllers.ES`, `MR`, `FrequencyProportional`) for the
cell's sparsity and seed, asks it once with the cell's `Observation`, and returns the plan.
BET and its ablations are in `tfembsize.protocol.methods.bet`, PEP in
`tfembsize.protocol.methods.pep`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from tfembsize.protocol.context import MethodContext, MethodOutput
from tfembsize.protocol.registry import register_method

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
