"""The papers' evaluation protocol for every registered method: `tfembsize.protocol.cli`.

A thin wrapper of ``python -m tfembsize.protocol`` that writes under this folder: the
default ``--out`` is ``benchmarks/results/paper_protocol/<dataset>_<backbone>`` and the
results record the command as ``python benchmarks/paper_protocol.py ...``. Every flag is the
package command line's (``--help``), including the method options generated from each
method's settings (``--bet-iterations/--bet-candidates/--bet-epochs/--bet-top-k``, ...).

Usage:
    python benchmarks/paper_protocol.py --dataset ml-1m --backbone mf \
        --methods full,es,mr --sparsity 0.8,0.9,0.95 --seeds 3 \
        --out benchmarks/results/paper_protocol/ml-1m_mf
    python benchmarks/paper_protocol.py --dataset synthetic --backbone mf --methods full,es \
        --d-max 32 --max-steps 200 --eval-every 50        # a smoke test in seconds
    python benchmarks/paper_protocol.py --dataset ml-1m --backbone mf --methods bet,es,mr \
        --bet-iterations 50 --bet-candidates 100 --bet-epochs 10 \
        --reuse-cells benchmarks/results/paper_protocol/ml-1m_mf \
        --out benchmarks/results/paper_protocol/ml-1m_mf_bet
    python benchmarks/bet_report.py benchmarks/results/paper_protocol/ml-1m_mf_bet
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from tfembsize.protocol import cli  # noqa: E402

RESULTS_ROOT = Path(__file__).resolve().parent / "results" / "paper_protocol"
PROGRAM = "python benchmarks/paper_protocol.py"

parse_args = cli.parse_args


def build_config(args: argparse.Namespace):
    """The ProtocolConfig of the command line (default --out under benchmarks/results)."""
    return cli.build_config(args, RESULTS_ROOT)


def main(argv: list[str] | None = None) -> int:
    return cli.main(argv, program=PROGRAM, results_root=RESULTS_ROOT, program_as_typed=True)


if __name__ == "__main__":
    sys.exit(main())
