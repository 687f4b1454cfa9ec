"""The paper protocol: a method registry and a resumable runner for comparable results.

`run_protocol` evaluates every registered method the same way: produce sizes, assert the
budget B(c) = floor((1 - c) d_max N), retrain from scratch with validation early stopping,
report test Recall/NDCG@{5, 20} beside the papers' numbers and the popularity baseline.
``python -m tfembsize.protocol`` (`tfembsize.protocol.cli`) is its command line. Size-search
methods plug in by name, with an optional frozen dataclass of settings that the command line
turns into ``--<group>-<field>`` options:

    from tfembsize.protocol import MethodOutput, register_method

    @register_method("my-method", settings=MySettings)
    def my_method(ctx):          # ctx: MethodContext (split, sparsity, seed, directory, ...)
        settings = ctx.settings()
        return MethodOutput(plan=...)

Modules: `registry` (methods by name; imports no method), `settings` (settings dataclasses),
`context` (what a method sees and returns), `cells` (one cell), `config` (a run),
`runner` (the run, resumable), `report` (summaries and tables), `methods` (the built-in
methods, one module per family: baselines, BET and its ablations, PEP), `cli`.
"""

from tfembsize.protocol.cells import CellResult, cell_key, run_cell
from tfembsize.protocol.config import ProtocolConfig
from tfembsize.protocol.context import MethodContext, MethodOutput, Retrained, model_usage
from tfembsize.protocol.paper import PaperCell, paper_cell
from tfembsize.protocol.registry import (
    Method,
    available_methods,
    get_method,
    register_method,
    unregister_method,
)
from tfembsize.protocol.report import (
    ProtocolReport,
    markdown_report,
    popularity_result,
    ratio_vs_es,
    search_times,
    summarise_cells,
    untrained_cells,
)
from tfembsize.protocol.runner import run_protocol

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
