"""Size search on a functional Keras model of your own: ``compile``/``fit``, then save and load.

A plain Keras recipe for implicit feedback: two towers (``IntegerLookup`` over raw ids, then
a table), their dot product as a logit, binary cross-entropy against one sampled negative per
positive, ``Adam``. The tables are ``tfembsize.layers.MaskedEmbedding`` in place of
``keras.layers.Embedding``; nothing else changes. Then:

1. ``FitEnvironment`` searches sizes at sparsity 0.9 through the model's own ``fit``, scored
   by ``TowerEvaluator``: full-ranking Recall/NDCG@k on validation, per user and per item;
2. the best plan is applied to a fresh model, trained with ``fit`` and scored on test;
3. ``model.save("model.keras")`` and ``keras.models.load_model`` give back the same model,
   sizes included.

Runs under Keras 3 (the default) and tf-keras (``TF_USE_LEGACY_KERAS=1``):
``python examples/keras3_fit.py [--data-dir DIR] [--output DIR] [--method bet|es]`` searches
ML-100K (``DIR/ml-100k``, default ``../shared/data``); ``--small`` runs a short search on
synthetic data. Rerunning resumes the search in the output directory.
"""

from __future__ import annotations

import argparse
import logging
import os
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

import tfembsize as tes  # noqa: E402

keras = tf.keras  # Keras 3, or tf-keras with TF_USE_LEGACY_KERAS=1

SPARSITY = 0.9
D_MAX = 32


def make_build_model(user_vocabulary: np.ndarray, item_vocabulary: np.ndarray):
    """``build_model()``: a new compiled functional model per call."""

    def tower(vocabulary: np.ndarray, name: str) -> keras.Model:
        return keras.Sequential(
            [
                keras.Input((), dtype="int64"),
                # Row 0 is the out-of-vocabulary row. (A list: tf-keras cannot save a
                # lookup whose vocabulary is a NumPy array.)
                keras.layers.IntegerLookup(vocabulary=vocabulary.tolist()),
                # was: keras.layers.Embedding(len(vocabulary) + 1, D_MAX)
                tes.layers.MaskedEmbedding(len(vocabulary) + 1, D_MAX, name=f"{name}_embedding"),
            ],
            name=f"{name}_tower",
        )

    def build_model() -> keras.Model:
        user_id = keras.Input((), dtype="int64", name="user_id")
        item_id = keras.Input((), dtype="int64", name="item_id")
        user_vector = tower(user_vocabulary, "user")(user_id)
        item_vector = tower(item_vocabulary, "item")(item_id)
        logit = keras.layers.Dot(axes=-1, name="score")([user_vector, item_vector])
        model = keras.Model({"user_id": user_id, "item_id": item_id}, logit, name="recommender")
        model.compile(
            optimizer=keras.optimizers.Adam(learning_rate=0.01),
            loss=keras.losses.BinaryCrossentropy(from_logits=True),
        )
        return model

    return build_model


def main(argv: list[str] | None = None) -> dict:
    """Runs the example; returns its numbers (the tests check them)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--data-dir", default=str(Path(__file__).resolve().parents[2] / "shared" / "data")
    )
    parser.add_argument("--output", default="keras3_fit_output")
    parser.add_argument("--method", choices=("bet", "es"), default="bet")
    parser.add_argument("--small", action="store_true", help="synthetic data, a short search")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    t_start = time.perf_counter()
    keras.utils.set_random_seed(args.seed)

    if args.small:
        data = tes.data.synthetic(80, 120, 2400, seed=args.seed)
        raw_users, raw_items = data.user_ids * 7 + 1000, data.item_ids * 13 + 5  # raw ids
        epochs, batch = 4, 256
    else:
        data = tes.data.load_movielens(Path(args.data_dir) / "ml-100k")
        raw_users, raw_items = data.user_ids, data.item_ids
        epochs, batch = 8, 1024
    split = data.split(0.5, 0.25, 0.25, seed=42)
    pairs = {
        part: (raw_users[p.users].astype(np.int64), raw_items[p.items].astype(np.int64))
        for part, p in (("train", split.train), ("validation", split.validation))
    }
    test_pairs = (raw_users[split.test.users], raw_items[split.test.items])
    build_model = make_build_model(np.unique(raw_users), np.unique(raw_items))

    def train_data() -> tf.data.Dataset:
        """Positives and one random negative each, new draws per call (seeded per step)."""
        users, items = pairs["train"]
        negatives = raw_items[np.random.randint(0, raw_items.size, users.size)]
        features = {
            "user_id": np.concatenate([users, users]),
            "item_id": np.concatenate([items, negatives]),
        }
        labels = np.concatenate([np.ones(users.size), np.zeros(users.size)]).astype("float32")
        ds = tf.data.Dataset.from_tensor_slices((features, labels))
        return ds.shuffle(2 * users.size).batch(batch)

    towers = {"query_tower": "user_tower", "candidate_tower": "item_tower"}
    evaluate = tes.search.TowerEvaluator(pairs["train"], pairs["validation"], **towers)
    probe = build_model()
    frequencies = {
        "user": tes.search.count_frequencies(pairs["train"][0], probe.get_layer("user_tower")),
        "item": tes.search.count_frequencies(pairs["train"][1], probe.get_layer("item_tower")),
    }
    rows = frequencies["user"].size + frequencies["item"].size
    budget = tes.Budget(sparsity=SPARSITY, d_max=D_MAX)
    print(
        f"{data.num_interactions} interactions; N = {rows} rows (with the lookups' "
        f"out-of-vocabulary rows); budget {budget.max_params_for(rows):,} of {D_MAX * rows:,}."
    )

    # 1. The search through the model's own fit.
    env = tes.search.FitEnvironment(
        build_model,
        train_data,
        evaluate,
        frequencies=frequencies,  # tables inferred from the layer names
        fit_kwargs={"epochs": epochs},
        seed=args.seed,
    )
    if args.method == "bet":
        controller = tes.controllers.BETController(
            SPARSITY,
            search_iterations=2 if args.small else 10,
            num_candidates=8 if args.small else 50,
            finetune_epochs=1,
            top_k=1 if args.small else 3,
            seed=args.seed,
        )
    else:
        controller = tes.controllers.ES(SPARSITY)
    search = tes.search.run(
        controller, env, os.path.join(args.output, f"search-{args.method}"), verbose=0
    )
    plan = search.best_plan
    print(f"Search ({args.method}): {len(search.history)} steps in {search.elapsed:.0f}s.")

    # 2. Train the plan from scratch with fit; test (train and validation items excluded).
    keras.utils.set_random_seed(args.seed)
    model = build_model()
    plan.apply(model)
    plan.check(budget)
    model.fit(train_data(), epochs=epochs, verbose=0)
    known = tuple(
        np.concatenate([a, b]) for a, b in zip(pairs["train"], pairs["validation"], strict=True)
    )
    test = tes.search.TowerEvaluator(known, test_pairs, **towers)(model)
    print(
        f"Sized model: {plan.total_params():,} parameters; test Recall@20 {test.recall_at(20):.4f}"
    )

    # 3. Save and load with Keras: the sizes travel with the model.
    path = os.path.join(args.output, "model.keras")
    model.save(path)
    loaded = keras.models.load_model(path)
    probe_ids = {"user_id": pairs["train"][0][:8], "item_id": pairs["train"][1][:8]}
    same = np.allclose(model.predict(probe_ids, verbose=0), loaded.predict(probe_ids, verbose=0))
    same_sizes = tes.SizePlan.from_model(loaded) == plan
    print(f"load_model gives the same scores: {same}; the same sizes: {same_sizes}")
    print(f"Done in {time.perf_counter() - t_start:.0f}s; outputs in {args.output}/.")
    return {
        "budget": budget.max_params_for(rows),
        "num_rows": rows,
        "usable_params": plan.total_params(),
        "reference_quality": search.reference.quality,
        "test_recall": test.recall_at(20),
        "same_scores": bool(same),
        "same_sizes": bool(same_sizes),
        "steps": len(search.history),
        "path": path,
    }


if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    main()
