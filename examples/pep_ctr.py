"""PEP on a click-through-rate model of your own: prune, retrain the ticket, export, serve.

PEP (Liu et al., ICLR 2021) gives every entry of an embedding table a learnable soft
threshold: an entry whose magnitude falls under its threshold is exactly zero, so the table
prunes itself while it trains. Here the table is the feature table of a small DeepFM-style
click model (one shared ``PEPEmbedding`` over all categorical fields, each field's ids offset
by the sizes of the fields before it; an FM part and a small MLP on top), built with the
functional Keras API and trained with ``compile``/``fit``. Steps:

1. read Criteo-style rows: the click label, 13 integer features (bucketed as
   ``int(log(x)^2)``) and 26 hashed categorical features; every value seen in training gets
   a row, and each field has a row for values never seen. The shipped 200-row Criteo sample
   (``DIR/criteo_sample``) is for plumbing only; ``--synthetic`` (or a missing file) uses
   generated clicks with a learnable signal instead;
2. prune: ``fit`` with ``tes.optimizers.PEPAdam`` (it moves the thresholds) and
   ``PEPController.callback()``, which captures the mask the first time the table's usable
   entries fall under each target budget ``floor((1 - c) * d * N)`` and stops the training
   once every target is captured; the reached sparsity is read from the layer and the
   controller. The thresholds rise by about ``--threshold-lr`` per step from
   ``--threshold-init``, so these two set how many steps the pruning takes;
3. retrain the most pruned mask as a lottery ticket: a fresh model from the same seed, its
   table restarted from its initial values ``E0 * M`` (``freeze_mask``), trained with
   ``fit``; validation and test AUC are reported;
4. ``tes.export.save_compressed`` writes it storing only the kept entries, and
   ``tf.saved_model.load`` serves click probabilities without tfembsize.

Runs under Keras 3 (the default) and tf-keras (``TF_USE_LEGACY_KERAS=1``):
``python examples/pep_ctr.py [--data-dir DIR] [--output DIR] [--synthetic] [--epochs N]``;
``--small`` uses small settings (seconds). Only step 4 writes files (``--output``).
"""

from __future__ import annotations

import argparse
import gzip
import logging
import math
import os
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

import tfembsize as tes  # noqa: E402
from tfembsize.controllers.pep import PEPController  # noqa: E402

keras = tf.keras  # Keras 3, or tf-keras with TF_USE_LEGACY_KERAS=1

NUM_INTEGER, NUM_CATEGORICAL = 13, 26


# Data ----------------------------------------------------------------------------------------
def _bucket(value: str) -> str:
    """An integer feature as a category: ``int(log(x)^2)`` above 2 (the usual Criteo recipe)."""
    if value == "":
        return "missing"
    x = float(value)
    return str(int(math.log(x) ** 2)) if x > 2 else str(int(x))


def read_criteo(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """``(raw fields [n, 39] as strings, labels [n])`` from a Criteo CSV (label, I1..13, C1..26)."""
    with gzip.open(path, "rt") if path.suffix == ".gz" else open(path) as f:
        header = f.readline().rstrip("\n").split(",")
        if len(header) != 1 + NUM_INTEGER + NUM_CATEGORICAL or header[0] != "label":
            raise ValueError(f"{path}: expected the header label,I1..I13,C1..C26; got {header}")
        rows = [line.rstrip("\n").split(",") for line in f if line.strip()]
    labels = np.array([float(r[0]) for r in rows], dtype=np.float32)
    fields = np.array(
        [[_bucket(v) for v in r[1 : 1 + NUM_INTEGER]] + r[1 + NUM_INTEGER :] for r in rows],
        dtype=object,
    )
    return fields, labels


def synthetic_ctr(n: int, num_fields: int, vocabulary: int, seed: int) -> tuple:
    """Generated clicks: a logit from per-value biases and a field-pair interaction."""
    rng = np.random.default_rng(seed)
    values = np.minimum(rng.geometric(4.0 / vocabulary, (n, num_fields)) - 1, vocabulary - 1)
    bias = rng.normal(0.0, 0.8, (num_fields, vocabulary))
    factors = rng.normal(0.0, 0.7, (num_fields, vocabulary, 2))
    logit = bias[np.arange(num_fields), values].sum(axis=1) / np.sqrt(num_fields)
    first = factors[0, values[:, 0]]
    second = factors[1, values[:, 1]]
    logit += 2.0 * (first * second).sum(axis=1) - 1.0
    labels = (rng.random(n) < 1.0 / (1.0 + np.exp(-logit))).astype(np.float32)
    return values.astype(str).astype(object), labels


def encode(fields: np.ndarray, train_rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Offset ids ``[n, F]`` and each field's size: training values get rows, row 0 is unseen."""
    ids = np.zeros(fields.shape, dtype=np.int32)
    dims = []
    offset = 0
    for f in range(fields.shape[1]):
        vocabulary = {v: k + 1 for k, v in enumerate(sorted(set(fields[train_rows, f])))}
        ids[:, f] = offset + np.array([vocabulary.get(v, 0) for v in fields[:, f]])
        dims.append(len(vocabulary) + 1)
        offset += dims[-1]
    return ids, np.array(dims)


def exact_auc(labels: np.ndarray, scores: np.ndarray) -> float:
    """Area under the ROC curve (Mann-Whitney, ties counted half); NaN with one class only."""
    pos, neg = scores[labels > 0.5], scores[labels <= 0.5]
    if pos.size == 0 or neg.size == 0:
        return float("nan")
    greater = (pos[:, None] > neg[None, :]).sum() + 0.5 * (pos[:, None] == neg[None, :]).sum()
    return float(greater / (pos.size * neg.size))


# Model ---------------------------------------------------------------------------------------
@keras.utils.register_keras_serializable(package="pep_ctr_example")
class FMInteraction(keras.layers.Layer):
    """FM's two terms: ``sum_i w_i + 1/2 sum_f ((sum_i v_if)^2 - sum_i v_if^2)``, ``[b, 1]``."""

    def call(self, inputs: list) -> tf.Tensor:
        v, w = inputs  # [b, F, d], [b, F, 1]
        pairwise = 0.5 * tf.reduce_sum(
            tf.square(tf.reduce_sum(v, axis=1)) - tf.reduce_sum(tf.square(v), axis=1), axis=1
        )
        return tf.reduce_sum(w, axis=[1, 2])[:, None] + pairwise[:, None]


def build_model(
    num_features: int, num_fields: int, dim: int, threshold_init: float, seed: int
) -> tuple[keras.Model, tes.layers.PEPEmbedding]:
    """DeepFM-style click model over one shared PEP feature table; outputs a logit ``[b, 1]``."""
    keras.utils.set_random_seed(seed)
    features = keras.Input((num_fields,), dtype="int32", name="features")
    # was: keras.layers.Embedding(num_features, dim)
    table = tes.layers.PEPEmbedding(
        num_features,
        dim,
        threshold_init=threshold_init,
        embeddings_initializer=keras.initializers.GlorotUniform(seed=seed),
        name="features_embedding",
    )
    v = table(features)
    w = keras.layers.Embedding(num_features, 1, embeddings_initializer="zeros", name="linear")(
        features
    )
    fm = FMInteraction(name="fm")([v, w])
    hidden = keras.layers.Dense(32, activation="relu", name="mlp")(
        keras.layers.Flatten(name="flatten")(v)
    )
    deep = keras.layers.Dense(1, name="mlp_out")(hidden)
    logit = keras.layers.Add(name="logit")([fm, deep])
    return keras.Model(features, logit, name="deepfm"), table


def compile_model(model: keras.Model, optimizer: keras.optimizers.Optimizer) -> None:
    model.compile(optimizer=optimizer, loss=keras.losses.BinaryCrossentropy(from_logits=True))


def main(argv: list[str] | None = None) -> dict:
    """Runs the example; returns its numbers (the tests check them)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--data-dir", default=str(Path(__file__).resolve().parents[2] / "shared" / "data")
    )
    parser.add_argument("--output", default="pep_ctr_output")
    parser.add_argument("--synthetic", action="store_true", help="generated clicks, no files")
    parser.add_argument("--small", action="store_true", help="small settings (seconds)")
    parser.add_argument("--rows", type=int, default=20_000, help="synthetic rows")
    parser.add_argument("--dim", type=int, default=16, help="embedding width d")
    parser.add_argument("--sparsity", default="0.5,0.8", help="comma-separated target sparsities")
    parser.add_argument("--prune-epochs", type=int, default=30, help="most epochs of pruning")
    parser.add_argument("--epochs", type=int, default=10, help="epochs of ticket retraining")
    parser.add_argument(
        "--batch-size", type=int, default=None, help="default: 32 (Criteo sample), 256 (synthetic)"
    )
    parser.add_argument("--learning-rate", type=float, default=1e-3)
    parser.add_argument("--threshold-init", type=float, default=-6.0, help="s0 of the thresholds")
    parser.add_argument("--threshold-lr", type=float, default=0.1, help="PEPAdam's threshold_lr")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.small:
        args.rows, args.prune_epochs, args.epochs = 2000, 10, 2
    t_start = time.perf_counter()
    sparsities = tuple(sorted(float(c) for c in args.sparsity.split(",") if c))

    # 1. Data: Criteo sample (or synthetic), 80/10/10 split, ids per field.
    criteo = Path(args.data_dir) / "criteo_sample" / "criteo_sample.txt.gz"
    if not args.synthetic and not criteo.is_file():
        print(f"{criteo} not found: using synthetic clicks.")
    if args.synthetic or not criteo.is_file():
        raw, labels = synthetic_ctr(args.rows, 8, 200, args.seed)
        source = "synthetic"
    else:
        raw, labels = read_criteo(criteo)
        source = "criteo_sample"
    if args.batch_size is None:
        args.batch_size = 256 if source == "synthetic" else 32
    perm = np.random.default_rng(args.seed).permutation(len(labels))
    n_eval = max(1, len(labels) // 10)
    rows = {
        "test": perm[:n_eval],
        "validation": perm[n_eval : 2 * n_eval],
        "train": perm[2 * n_eval :],
    }
    ids, dims = encode(raw, rows["train"])
    data = {part: (ids[r], labels[r]) for part, r in rows.items()}
    num_features, num_fields = int(dims.sum()), ids.shape[1]
    print(
        f"{source}: {len(labels):,} rows ({labels.mean():.1%} clicks), {num_fields} fields, "
        f"N = {num_features:,} feature rows; full table {num_features * args.dim:,} entries."
    )

    def fit(model: keras.Model, epochs: int, callbacks: list | None = None) -> None:
        model.fit(
            *data["train"],
            batch_size=args.batch_size,
            epochs=epochs,
            shuffle=True,
            verbose=0,
            callbacks=callbacks or [],
        )

    def auc(model: keras.Model, part: str) -> float:
        x, y = data[part]
        return exact_auc(y, model.predict(x, batch_size=4096, verbose=0).reshape(-1))

    # 2. Prune with learnable thresholds until every target is captured (or epochs run out).
    model, table = build_model(num_features, num_fields, args.dim, args.threshold_init, args.seed)
    e0 = table.embeddings.numpy().copy()  # the initial table, for the lottery ticket
    controller = PEPController(sparsities).attach(model)
    compile_model(
        model,
        tes.optimizers.PEPAdam(
            args.learning_rate, threshold_lr=args.threshold_lr, threshold_l2=1e-5, l2=1e-5
        ),
    )
    fit(model, args.prune_epochs, [controller.callback()])
    full = num_features * args.dim
    reached = 1.0 - table.usable_params() / full
    print(
        f"Pruning: {controller.last_step} steps; the table keeps {table.usable_params():,} of "
        f"{full:,} entries (sparsity {reached:.3f}); validation AUC {auc(model, 'validation'):.4f}."
    )
    for c, capture in sorted(controller.captures.items()):
        print(
            f"  target {c:g}: captured at step {capture.step}, {capture.usable_params:,} entries "
            f"<= budget {capture.limit:,}"
        )
    if controller.missed:
        print(f"  missed targets {list(controller.missed)}: prune longer or raise --threshold-lr")
    if not controller.captures:
        raise SystemExit("No target sparsity was reached; nothing to retrain.")

    # 3. The lottery ticket of the most pruned mask: same seed, E0 * M, retrained with fit.
    sparsity = max(controller.captures)
    capture = controller.captures[sparsity]
    ticket, ticket_table = build_model(
        num_features, num_fields, args.dim, args.threshold_init, args.seed
    )
    ticket_table.freeze_mask(capture.masks[table.name], rewind_values=e0)
    budget = tes.Budget(sparsity=sparsity, d_max=args.dim)
    budget.check_total(ticket_table.usable_params(), num_features)
    compile_model(ticket, keras.optimizers.Adam(args.learning_rate))
    fit(ticket, args.epochs)
    result = {"validation": auc(ticket, "validation"), "test": auc(ticket, "test")}
    print(
        f"Ticket at sparsity {sparsity:g}: {ticket_table.usable_params():,} entries "
        f"(budget {budget.max_params_for(num_features):,}); validation AUC "
        f"{result['validation']:.4f}, test AUC {result['test']:.4f}."
    )

    # 4. Export storing only the kept entries; serve with plain TensorFlow.
    export_path = os.path.join(args.output, "export")
    exported = tes.export.save_compressed(ticket, export_path, signatures="call", overwrite=True)
    report = tes.export.compression_report(export_path)
    served = tf.saved_model.load(export_path)
    signature = served.signatures["serving_default"]
    x_test = data["test"][0][:5]
    # The signature takes the model's input by its name and returns the logits as "outputs".
    served_logits = signature(features=tf.constant(x_test))["outputs"].numpy().reshape(-1)
    probabilities = tf.sigmoid(served_logits).numpy()
    print(f"Exported to {export_path} ({exported.signatures}):")
    print(report)
    print(
        f"Served click probabilities of 5 test rows: {[round(float(p), 3) for p in probabilities]}"
    )
    print(f"Done in {time.perf_counter() - t_start:.0f}s.")
    return {
        "source": source,
        "num_features": num_features,
        "dim": args.dim,
        "sparsities": sparsities,
        "captures": dict(controller.captures),
        "missed": tuple(controller.missed),
        "reached_sparsity": reached,
        "ticket_sparsity": sparsity,
        "ticket_params": ticket_table.usable_params(),
        "budget": budget.max_params_for(num_features),
        "auc": result,
        "export": export_path,
        "served_logits": served_logits,
        "model_logits": ticket.predict(x_test, verbose=0).reshape(-1),
        "served_probabilities": probabilities,
    }


if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    main()
