"""The paper protocol: a method registry and a resumable runner for comparable results.

`run_protocol` evaluates every registered method the same way (spec §1): produce sizes,
assert the budget, retrain from scratch with validation early stopping, report test
Recall/NDCG@{5, 20} beside the papers' numbers and the popularity baseline.
``benchmarks/paper_protocol.py`` is its command line. Size-search methods plug in by name:

    from tfembsize.protocol import MethodOutput, register_method

    @register_method("my-method")
    def my_method(ctx):          # ctx: MethodContext (split, sparsity, seed, directory, ...)
        return MethodOutput(plan=...)

BET and its ablations are registered as ``bet``, ``bet-random`` and ``bet-sizes-only``
(`tfembsize.protocol.bet`: one multi-sparsity search per seed, top-5 retraining per cell).
"""

from tfembsize.protocol.paper import PaperCell, paper_cell
from tfembsize.protocol.registry import (
    Method,
    available_methods,
    get_method,
    register_method,
    unregister_method,
)
from tfembsize.protocol.runner import (
    CellResult,
    MethodContext,
    MethodOutput,
    ProtocolConfig,
    ProtocolReport,
    Retrained,
    cell_key,
    markdown_report,
    model_usage,
    popularity_result,
    ratio_vs_es,
    run_cell,
    run_protocol,
    search_times,
    summarise_cells,
    untrained_cells,
)

__all__ = [
    "CellResult",
    "Method",
    "MethodContext",
    "MethodOutput",
    "PaperCell",
    "ProtocolConfig",
    "ProtocolReport",
    "Retrained",
    "available_methods",
    "cell_key",
    "get_method",
    "markdown_report",
    "model_usage",
    "paper_cell",
    "popularity_result",
    "ratio_vs_es",
    "register_method",
    "run_cell",
    "run_protocol",
    "search_times",
    "summarise_cells",
    "untrained_cells",
    "unregister_method",
]
