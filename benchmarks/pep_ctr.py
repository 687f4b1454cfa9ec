"""PEP in its original setting: CTR prediction with FM on MovieLens-1M attribute fields.

The data follow the official PEP code's ML-1M loader (``ssui-liu/learnable-embed-sizes-for-
RecSys``, ``data_loader/movielens.py``): ratings of 3 are dropped, the label is ``rating > 3``,
and each rating has 7 categorical fields and no user or item id: a bucketed timestamp
(``int(log(t - t_min)^2)``), gender, age, occupation, zip code, release year and the movie's
genre combination. Rows are split 80/10/10 at random (seed 42) into train, validation and
test.

Model: a factorization machine, ``sigmoid(b + sum_i w_i + 1/2 sum_f ((sum_i v_if)^2 -
sum_i v_if^2))``, whose factor table ``v`` is **one shared `PEPEmbedding` over all fields**
(each field's ids are offset by the sizes of the fields before it, as in the official code).
We chose the shared table because PEP's budget and its parameter counts are over the whole
table, and because a single ``[num_features, d]`` layer is what an export packs; one PEP layer
per field works the same way (a `PEPController` attached to several layers sums their counts
and budgets over their rows). The linear weights ``w`` are a plain 1-wide ``Embedding`` and are
not pruned (as in the official FM); they are counted separately.

Recipe (the PEP authors' official ML-1M settings): d = 32, Xavier-uniform init, batch 1024,
`PEPAdam` lr 1e-3 with threshold_lr 1e-3, coupled L2 1e-5, global clip 100, s0 = -15,
per-entry thresholds. The pruning run (``model.fit`` with `PEPController.callback`) captures
a mask at each target sparsity; each mask is retrained as a lottery ticket (``E0 * M``, the
other weights from the same seed) with early stopping on validation AUC (patience 2), and
test AUC is reported for the restored best epoch, most pruned ticket first. The full-size FM
is trained with the same recipe for reference, last. Every finished stage is kept in
``benchmarks/results/_work/pep_ctr`` (not committed) and in ``results/pep_ctr.partial.json``,
so rerunning the same command resumes after the last finished stage. AUC is the exact
Mann-Whitney statistic over the whole split (the official code averages per-batch AUCs).

Usage:
    python benchmarks/pep_ctr.py            # about 20-40 minutes on 2 CPU cores
    python benchmarks/pep_ctr.py --quick    # smoke test on a subsample
    python benchmarks/pep_ctr.py --sparsity 0.8,0.95 --max-epochs 15   # fewer tickets
"""

from __future__ import annotations

import argparse
import gzip
import json
import math
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import write_results  # noqa: E402

from tfembsize._keras import is_legacy_keras, keras  # noqa: E402
from tfembsize.controllers.pep import PEPController  # noqa: E402
from tfembsize.layers.pep_embedding import PEPAdam, PEPEmbedding  # noqa: E402

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "ml-1m"
FIELDS = ("timestamp", "gender", "age", "occupation", "zip_code", "year", "genres")
DIM = 32
BATCH = 1024
SPARSITIES = (0.5, 0.8, 0.9, 0.95, 0.98)
PAPER = {"LR": 0.7717, "PEP-0 FM": (0.8368, 6541)}


# Data --------------------------------------------------------------------------------------
def _encode(values: list) -> np.ndarray:
    """Label encoding (sorted unique values -> 0..k-1), as sklearn's LabelEncoder."""
    uniq = sorted(set(values))
    index = {v: i for i, v in enumerate(uniq)}
    return np.array([index[v] for v in values], dtype=np.int32)


def _time_bucket(v: int) -> str:
    return str(int(math.log(v) ** 2)) if v > 2 else str(v - 2)


def load_ml1m_ctr(data_dir: Path = DATA) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(features [n, 7] with field offsets, labels [n], field_dims [7])``."""
    with gzip.open(data_dir / "users.dat.gz", "rt", encoding="latin-1") as f:
        users = {}
        for line in f:
            uid, gender, age, occ, zipc = line.rstrip("\n").split("::")
            users[int(uid)] = (gender, age, occ, zipc)
    with gzip.open(data_dir / "movies.dat.gz", "rt", encoding="latin-1") as f:
        movies = {}
        for line in f:
            mid, title, genres = line.rstrip("\n").split("::")
            movies[int(mid)] = (int(title.strip()[-5:-1]), "|".join(sorted(genres.split("|"))))
    rows = []
    with gzip.open(data_dir / "ratings.dat.gz", "rt") as f:
        for line in f:
            uid, mid, rating, ts = (int(x) for x in line.split("::"))
            if rating != 3:
                rows.append((uid, mid, rating, ts))
    t_min = min(r[3] for r in rows)
    columns = [
        [_time_bucket(r[3] - t_min) for r in rows],
        *[[users[r[0]][k] for r in rows] for k in range(4)],
        [movies[r[1]][0] for r in rows],
        [movies[r[1]][1] for r in rows],
    ]
    codes = [_encode(c) for c in columns]
    dims = np.array([int(c.max()) + 1 for c in codes], dtype=np.int64)
    offsets = np.concatenate([[0], np.cumsum(dims)[:-1]])
    x = np.stack(codes, axis=1).astype(np.int64) + offsets[None, :]
    y = np.array([1.0 if r[2] > 3 else 0.0 for r in rows], dtype=np.float32)
    return x.astype(np.int32), y, dims


def split_rows(n: int, seed: int = 42) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    perm = np.random.default_rng(seed).permutation(n)
    n_test = n_val = n // 10
    return perm[n_test + n_val :], perm[n_test : n_test + n_val], perm[:n_test]


def exact_auc(labels: np.ndarray, scores: np.ndarray) -> float:
    """Mann-Whitney AUC with average ranks for ties."""
    order = np.argsort(scores, kind="mergesort")
    s = scores[order]
    ranks = np.empty(len(s), dtype=np.float64)
    i = 0
    while i < len(s):
        j = i
        while j + 1 < len(s) and s[j + 1] == s[i]:
            j += 1
        ranks[i : j + 1] = (i + j) / 2.0 + 1.0
        i = j + 1
    r = np.empty_like(ranks)
    r[order] = ranks
    pos = labels > 0.5
    n_pos, n_neg = int(pos.sum()), int((~pos).sum())
    return float((r[pos].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


# Model -------------------------------------------------------------------------------------
class FM(keras.Model):
    """Factorization machine over one shared factor table (``[num_features, d]``)."""

    def __init__(self, num_features: int, table: keras.layers.Layer, **kwargs) -> None:
        super().__init__(**kwargs)
        self.table = table
        self.linear = keras.layers.Embedding(
            num_features, 1, embeddings_initializer="zeros", name="linear"
        )

    def build(self, input_shape=None) -> None:  # noqa: ANN001
        self.bias = self.add_weight(name="bias", shape=(), initializer="zeros")
        super().build(input_shape)

    def call(self, x: tf.Tensor) -> tf.Tensor:
        v = self.table(x)  # [b, fields, d]
        linear = tf.reduce_sum(self.linear(x), axis=[1, 2])
        pairwise = 0.5 * tf.reduce_sum(
            tf.square(tf.reduce_sum(v, axis=1)) - tf.reduce_sum(tf.square(v), axis=1), axis=1
        )
        return tf.sigmoid(self.bias + linear + pairwise)[:, None]


def make_fm(num_features: int, seed: int) -> tuple[FM, PEPEmbedding]:
    keras.utils.set_random_seed(seed)
    table = PEPEmbedding(
        num_features,
        DIM,
        threshold_init=-15.0,
        embeddings_initializer=keras.initializers.GlorotUniform(seed=seed),
        name="features",
    )
    model = FM(num_features, table)
    model(tf.zeros([1, len(FIELDS)], tf.int32))
    return model, table


def optimizer() -> PEPAdam:
    return PEPAdam(1e-3, threshold_lr=1e-3, threshold_l2=1e-5, l2=1e-5, global_clipnorm=100.0)


def predict(model: FM, x: np.ndarray) -> np.ndarray:
    return model.predict(x, batch_size=8192, verbose=0).reshape(-1)


class ValidationAUC(keras.callbacks.Callback):
    """Exact validation AUC after each epoch, early stopping, best weights restored."""

    def __init__(self, x: np.ndarray, y: np.ndarray, patience: int = 2) -> None:
        super().__init__()
        self.x, self.y, self.patience = x, y, patience
        self.best, self.best_epoch, self.wait, self.best_weights = -1.0, -1, 0, None
        self.history: list[float] = []

    def on_epoch_end(self, epoch: int, logs=None) -> None:  # noqa: ANN001
        auc = exact_auc(self.y, predict(self.model, self.x))
        self.history.append(auc)
        if auc > self.best:
            self.best, self.best_epoch, self.wait = auc, epoch, 0
            self.best_weights = self.model.get_weights()
        else:
            self.wait += 1
            if self.wait >= self.patience:
                self.model.stop_training = True

    def on_train_end(self, logs=None) -> None:  # noqa: ANN001
        if self.best_weights is not None:
            self.model.set_weights(self.best_weights)


def train_with_validation(model: FM, data: dict, epochs: int) -> dict:
    model.compile(optimizer=optimizer(), loss="binary_crossentropy")
    callback = ValidationAUC(*data["val"])
    t0 = time.perf_counter()
    model.fit(*data["train"], batch_size=BATCH, epochs=epochs, verbose=0, callbacks=[callback])
    return {
        "val_auc": callback.best,
        "best_epoch": callback.best_epoch + 1,
        "epochs": len(callback.history),
        "test_auc": exact_auc(data["test"][1], predict(model, data["test"][0])),
        "seconds": time.perf_counter() - t0,
    }


# Runs --------------------------------------------------------------------------------------
WORK = Path(__file__).resolve().parent / "results" / "_work" / "pep_ctr"


def _save_partial(work: Path, partial: dict) -> None:
    work.mkdir(parents=True, exist_ok=True)
    tmp = work / "partial.json.tmp"
    tmp.write_text(json.dumps(partial, indent=1))
    os.replace(tmp, work / "partial.json")


def run(
    quick: bool,
    seed: int,
    max_epochs: int,
    prune_epochs: int,
    sparsities: tuple[float, ...] = SPARSITIES,
    work: Path | None = None,
    on_stage=None,  # noqa: ANN001
) -> dict:
    """Pruning, then the tickets (most pruned first), then the full FM; resumable in ``work``.

    Each finished stage is kept in ``work/partial.json`` (with the masks and ``E0`` of the
    pruning run), so a rerun with the same settings skips it; ``on_stage(result)`` is called
    after every stage with the result so far.
    """
    x, y, dims = load_ml1m_ctr()
    if quick:
        keep = np.random.default_rng(0).permutation(len(y))[:60_000]
        x, y = x[keep], y[keep]
    train, val, test = split_rows(len(y))
    data = {"train": (x[train], y[train]), "val": (x[val], y[val]), "test": (x[test], y[test])}
    num_features = int(dims.sum())
    info = {
        "rows": int(len(y)),
        "positives": float(y.mean()),
        "field_dims": dict(zip(FIELDS, dims.tolist(), strict=True)),
        "num_features": num_features,
        "dim": DIM,
        "full_table_params": num_features * DIM,
        "split": {k: int(len(v[1])) for k, v in data.items()},
    }
    print(json.dumps(info, indent=1))
    settings = {
        "quick": quick,
        "seed": seed,
        "max_epochs": max_epochs,
        "prune_epochs": prune_epochs,
        "sparsities": list(sparsities),
    }
    work = None if work is None else Path(work) / ("quick" if quick else "full")
    partial: dict = {"settings": settings, "captures": {}}
    if work is not None and (work / "partial.json").exists():
        saved = json.loads((work / "partial.json").read_text())
        if saved.get("settings") == settings:
            partial = saved
            print("resuming", sorted(k for k in partial if k != "settings"))

    def result() -> dict:
        captures = partial["captures"]
        most = max((float(c) for c in captures), default=None)
        return {
            "keras": "tf-keras" if is_legacy_keras() else "keras3",
            "quick": quick,
            "seed": seed,
            "data": info,
            "full_fm": partial.get("full_fm"),
            "pruning": partial.get("pruning"),
            "captures": dict(sorted(captures.items(), key=lambda kv: float(kv[0]))),
            "most_pruned": None if most is None else {"sparsity": most, **captures[str(most)]},
            "linear_params": num_features + 1,
            "paper": PAPER,
        }

    def stage_done() -> None:
        if work is not None:
            _save_partial(work, partial)
        if on_stage is not None:
            on_stage(result())

    # Pruning run: model.fit + the controller's callback, masks captured at each target.
    controller = PEPController(sparsities)
    if "pruning" in partial and controller.restore(work):
        e0 = np.load(work / "e0.npy")
    else:
        model, table = make_fm(num_features, seed)
        e0 = table.embeddings.numpy().copy()
        if work is not None:
            work.mkdir(parents=True, exist_ok=True)
            np.save(work / "e0.npy", e0)
        controller.directory = None if work is None else str(work)
        model.compile(optimizer=optimizer(), loss="binary_crossentropy")
        t0 = time.perf_counter()
        model.fit(
            *data["train"],
            batch_size=BATCH,
            epochs=prune_epochs,
            verbose=0,
            callbacks=[controller.callback()],
        )
        partial["pruning"] = {
            "sparsities": list(sparsities),
            "captured_at_step": {str(c): cap.step for c, cap in controller.captures.items()},
            "missed": list(controller.missed),
            "seconds": time.perf_counter() - t0,
        }
        stage_done()
    print("pruning", partial["pruning"])

    # Lottery tickets, most pruned first.
    for c, cap in sorted(controller.captures.items(), reverse=True):
        if str(c) in partial["captures"]:
            continue
        ticket, ticket_table = make_fm(num_features, seed)
        ticket_table.freeze_mask(cap.masks["features"], rewind_values=e0)
        assert ticket_table.usable_params() <= cap.limit
        out = train_with_validation(ticket, data, max_epochs)
        out.update(
            step=cap.step,
            params=ticket_table.usable_params(),
            budget=cap.limit,
            rows_with_any_entry=int((ticket_table.row_sizes() > 0).sum()),
        )
        partial["captures"][str(c)] = out
        print(c, out)
        stage_done()

    # Full-size FM (thresholds frozen open: every entry kept) for reference.
    if "full_fm" not in partial:
        full, table = make_fm(num_features, seed)
        table.freeze_mask(np.ones((num_features, DIM), bool))
        reference = train_with_validation(full, data, max_epochs)
        reference["params"] = table.usable_params()
        partial["full_fm"] = reference
        print("full FM", reference)
        stage_done()
    return result()


def markdown(r: dict) -> str:
    lines = [
        "# PEP on CTR: FM over MovieLens-1M attribute fields",
        "",
        f"{r['data']['rows']:,} ratings (3s dropped; label rating > 3), 7 fields, "
        f"{r['data']['num_features']:,} features in one shared PEPEmbedding (d = {DIM}, "
        f"{r['data']['full_table_params']:,} entries); split 80/10/10. Tickets retrained with "
        "early stopping on validation AUC; exact test AUC. Params = usable (non-zero) entries "
        f"of the factor table; the {r['linear_params']:,} linear weights are not pruned.",
        "",
        "| model | params | test AUC | val AUC | captured at step | epochs (best) |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    if r["full_fm"]:
        f = r["full_fm"]
        lines.append(
            f"| full FM | {f['params']:,} | {f['test_auc']:.4f} | {f['val_auc']:.4f} | - | "
            f"{f['epochs']} ({f['best_epoch']}) |"
        )
    for c, out in r["captures"].items():
        lines.append(
            f"| PEP c={c} | {out['params']:,} | {out['test_auc']:.4f} | {out['val_auc']:.4f} | "
            f"{out['step']} | {out['epochs']} ({out['best_epoch']}) |"
        )
    if r["pruning"] and r["pruning"]["missed"]:
        lines.append(f"\nMissed targets (not reached by the pruning run): {r['pruning']['missed']}")
    lines += [
        "",
        f"Paper (PEP, ICLR 2021, Table 1, ML-1M): LR {PAPER['LR']}, PEP-0 FM "
        f"{PAPER['PEP-0 FM'][0]} AUC with {PAPER['PEP-0 FM'][1]:,} parameters (their split, "
        "per-batch AUC, test-set model selection; not directly comparable).",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="subsample, few epochs")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max-epochs", type=int, default=30)
    parser.add_argument("--prune-epochs", type=int, default=60)
    parser.add_argument(
        "--sparsity",
        default=",".join(f"{c:g}" for c in SPARSITIES),
        help="comma-separated target sparsities of the pruning run",
    )
    parser.add_argument(
        "--work", default=str(WORK), help="working directory of the resumable run ('' for none)"
    )
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()
    if args.quick:
        args.max_epochs, args.prune_epochs = 3, 3
    sparsities = tuple(sorted(float(c) for c in args.sparsity.split(",") if c))

    def on_stage(partial: dict) -> None:
        if not args.no_write:
            write_results("pep_ctr.partial", partial, markdown(partial))

    result = run(
        args.quick,
        args.seed,
        args.max_epochs,
        args.prune_epochs,
        sparsities,
        Path(args.work) if args.work else None,
        on_stage,
    )
    print(markdown(result))
    if not args.no_write:
        jpath, mpath = write_results("pep_ctr", result, markdown(result))
        print(f"wrote {jpath} and {mpath}")


if __name__ == "__main__":
    main()
