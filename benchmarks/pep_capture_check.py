"""PEP's pruning capture on ML-100K MF (the protocol's builder and recipe) against a saved mask.

Runs `run_pep` for c = 0.9 without retraining (lr 1e-3, batch 2048, seed 0, split 50/25/25
with seed 42, as `paper_protocol.py --dataset ml-100k --backbone mf --methods pep`), then
compares the captured masks entry for entry with a ``masks_0p9.npz`` written by another run
(e.g. the ``work/pep__shared__seed0`` folder of a protocol run of another commit).

Usage:
    python benchmarks/pep_capture_check.py MASKS.npz WORK_DIR [--jit-compile]
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import write_results  # noqa: E402

from tfembsize import _io  # noqa: E402
from tfembsize.controllers.pep import PEPConfig, run_pep  # noqa: E402
from tfembsize.data import load_dataset  # noqa: E402
from tfembsize.protocol.backbones import get_backbone  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("masks", help="the other run's masks_0p9.npz")
    p.add_argument("work", help="folder for this pruning run (resumable)")
    p.add_argument("--jit-compile", action="store_true")
    args = p.parse_args()
    split = load_dataset("ml-100k").split(0.5, 0.25, 0.25, seed=42)

    def builder(seed: int) -> object:
        return get_backbone("mf")(split, 128, seed)

    pep = PEPConfig(learning_rate=1e-3, batch_size=2048, jit_compile=args.jit_compile)
    result = run_pep(split, builder, (0.9,), seed=0, pep=pep, retrain=False, directory=args.work)
    capture = result[0.9].capture
    other = _io.read_npz(args.masks, what="saved masks")
    payload = {
        "jit_compile": args.jit_compile,
        "step": None if capture is None else capture.step,
        "usable": None if capture is None else capture.usable_params,
        "layer_params": None if capture is None else dict(capture.layer_params),
        "masks_equal_before": capture is not None
        and all(np.array_equal(other[k], capture.masks[k]) for k in other),
    }
    md = (
        "# PEP capture on ML-100K MF vs a saved mask\n\n"
        f"jit_compile={args.jit_compile}: capture step {payload['step']}, usable "
        f"{payload['usable']}, masks equal: {payload['masks_equal_before']}\n"
    )
    write_results("pep_capture_check", payload, md)
    print(md)  # noqa: T201


if __name__ == "__main__":
    main()
