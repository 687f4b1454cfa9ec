"""BET against ES and MR from a paper-protocol run: `tfembsize.protocol.bet_report`.

A thin command line that writes ``benchmarks/results/<name>.{json,md}`` (default name
``bet_<dataset>_<backbone>``); see the module for what the report holds.

Usage:
    python benchmarks/bet_report.py benchmarks/results/paper_protocol/gowalla_mf
    python benchmarks/bet_report.py OUT --name bet_gowalla_mf
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common  # noqa: E402

from tfembsize.protocol import bet_report  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    return bet_report.main(argv, results_dir=common.RESULTS)


if __name__ == "__main__":
    sys.exit(main())
