"""Size search on the TensorFlow Recommenders basic-retrieval model, trained by its own ``fit``.

The model is the TFRS basic-retrieval tutorial's, on MovieLens-100K: ``StringLookup`` towers
for user ids and movie titles, ``tfrs.tasks.Retrieval`` with ``FactorizedTopK`` metrics,
``compile(Adagrad(0.1))`` and ``fit``. The only change is the tables: ``Embedding`` becomes
``tfembsize.layers.MaskedEmbedding``. Then:

1. ``FitEnvironment`` searches it as it is: each step applies a size plan to the two tables,
   trains with the model's own ``fit`` and scores it with the tutorial's own metric
   (``model.evaluate(...)["factorized_top_k/top_100_categorical_accuracy"]``) on validation;
2. BET (or the uniform baseline ES, ``--method es``) finds sizes for sparsity 0.9: at most
   ``floor(0.1 * 32 * N)`` usable parameters, N counting every table row, the lookups'
   out-of-vocabulary rows included;
3. the plan is applied to a fresh model, trained as in the tutorial and scored on test;
4. the towers are exported compressed with ``save_compressed`` and served by raw ids with
   plain ``tf.saved_model.load``.

TensorFlow Recommenders runs on tf-keras only: this script sets ``TF_USE_LEGACY_KERAS=1``
before TensorFlow is imported. Run it with
``python examples/tfrs_retrieval.py [--data-dir DIR] [--output DIR] [--method bet|es]``
(ML-100K from ``DIR/ml-100k/u.data[.gz]`` and ``u.item[.gz]``, default ``../shared/data``), or
with ``--small`` for a quick run on synthetic ML-100K-like data. Rerunning resumes the search
in the output directory.
"""

from __future__ import annotations

import argparse
import gzip
import logging
import os
import time
from pathlib import Path

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")  # TFRS needs tf-keras; before TensorFlow
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

import tfembsize as tes  # noqa: E402

SPARSITY = 0.9
EMBEDDING_DIMENSION = 32  # the tutorial's


# Data --------------------------------------------------------------------------------------
def _read(path: Path) -> bytes:
    for candidate in (path, path.with_name(path.name + ".gz")):
        if candidate.exists():
            raw = candidate.read_bytes()
            return gzip.decompress(raw) if candidate.suffix == ".gz" else raw
    raise FileNotFoundError(f"{path}[.gz] not found; pass --data-dir (or --small).")


def movielens_100k(data_dir: Path) -> tuple[np.ndarray, np.ndarray]:
    """(user_id, movie_title) of every ML-100K rating, as strings (the tutorial's features)."""
    folder = data_dir / "ml-100k"
    titles = {}
    for line in _read(folder / "u.item").decode("latin-1").splitlines():
        fields = line.split("|")
        if len(fields) > 1:
            titles[fields[0]] = fields[1]
    users, movies = [], []
    for line in _read(folder / "u.data").decode("latin-1").splitlines():
        fields = line.split("\t")
        if len(fields) >= 2:
            users.append(fields[0])
            movies.append(titles[fields[1]])
    return np.asarray(users), np.asarray(movies)


def synthetic_ratings(
    num_users: int, num_movies: int, num_ratings: int, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """ML-100K-like ratings: string ids, power-law movie popularity and user activity."""
    rng = np.random.default_rng(seed)
    user_p = 1.0 / np.arange(1, num_users + 1) ** 0.6
    movie_p = 1.0 / np.arange(1, num_movies + 1) ** 0.9
    users = rng.choice(num_users, num_ratings, p=user_p / user_p.sum())
    # Two taste groups, so that there is something to learn.
    group = users % 2
    movies = rng.choice(num_movies, num_ratings, p=movie_p / movie_p.sum())
    movies = np.where(group == 1, num_movies - 1 - movies, movies)
    return (
        np.asarray([str(u + 1) for u in users]),
        np.asarray([f"Movie {m + 1} ({1950 + m % 50})" for m in movies]),
    )


# The tutorial's model, tables swapped ------------------------------------------------------
def make_build_model(unique_user_ids, unique_movie_titles, top_k: int, learning_rate: float):
    """``build_model()`` of the tutorial: a new compiled ``tfrs.Model`` per call."""
    import tensorflow_recommenders as tfrs

    keras = tf.keras  # tf-keras, as TensorFlow Recommenders needs

    class MovielensModel(tfrs.Model):
        def __init__(self, user_model, movie_model, task):
            super().__init__()
            self.movie_model = movie_model
            self.user_model = user_model
            self.task = task

        def compute_loss(self, features, training=False):
            user_embeddings = self.user_model(features["user_id"])
            movie_embeddings = self.movie_model(features["movie_title"])
            # The retrieval metrics are costly: compute them when evaluating only.
            return self.task(user_embeddings, movie_embeddings, compute_metrics=not training)

    movies = tf.data.Dataset.from_tensor_slices(unique_movie_titles)

    def build_model():
        user_model = keras.Sequential(
            [
                keras.layers.StringLookup(vocabulary=unique_user_ids, mask_token=None),
                # was: keras.layers.Embedding(len(unique_user_ids) + 1, EMBEDDING_DIMENSION)
                tes.layers.MaskedEmbedding(
                    len(unique_user_ids) + 1, EMBEDDING_DIMENSION, name="user_embedding"
                ),
            ],
            name="user_model",
        )
        movie_model = keras.Sequential(
            [
                keras.layers.StringLookup(vocabulary=unique_movie_titles, mask_token=None),
                tes.layers.MaskedEmbedding(
                    len(unique_movie_titles) + 1, EMBEDDING_DIMENSION, name="movie_embedding"
                ),
            ],
            name="movie_model",
        )
        metrics = tfrs.metrics.FactorizedTopK(
            candidates=movies.batch(128).map(movie_model), ks=(1, 5, 10, top_k)
        )
        model = MovielensModel(user_model, movie_model, tfrs.tasks.Retrieval(metrics=metrics))
        model.compile(optimizer=keras.optimizers.Adagrad(learning_rate=learning_rate))
        return model

    return build_model


# The run -----------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> dict:
    """Runs the example; returns its numbers (the tests check them)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--data-dir", default=str(Path(__file__).resolve().parents[2] / "shared" / "data")
    )
    parser.add_argument("--output", default="tfrs_output")
    parser.add_argument("--method", choices=("bet", "es"), default="bet")
    parser.add_argument("--small", action="store_true", help="synthetic data, a short search")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    t_start = time.perf_counter()
    tf.keras.utils.set_random_seed(args.seed)

    if args.small:
        users, titles = synthetic_ratings(60, 90, 3000, seed=args.seed)
        batch, epochs, top_k = 256, 3, 10
    else:
        users, titles = movielens_100k(Path(args.data_dir))
        batch, epochs, top_k = 8192, 3, 100
    # The tutorial's split, with a validation part for the search: 80/10/10, shuffled once.
    order = np.random.default_rng(42).permutation(users.size)
    cut1, cut2 = int(0.8 * users.size), int(0.9 * users.size)
    parts = {"train": order[:cut1], "validation": order[cut1:cut2], "test": order[cut2:]}

    def dataset(part: str) -> tf.data.Dataset:
        idx = parts[part]
        return tf.data.Dataset.from_tensor_slices(
            {"user_id": users[idx], "movie_title": titles[idx]}
        )

    def train_data() -> tf.data.Dataset:
        # A new shuffle per call: each search step's batches depend only on its seed.
        return dataset("train").shuffle(len(parts["train"])).batch(batch)

    validation = dataset("validation").batch(4096).cache()
    unique_user_ids, unique_movie_titles = np.unique(users), np.unique(titles)
    build_model = make_build_model(unique_user_ids, unique_movie_titles, top_k, 0.1)
    metric = f"factorized_top_k/top_{top_k}_categorical_accuracy"

    # Training counts per table row, through the towers' own lookups (row 0: unknown ids).
    probe = build_model()
    train = dataset("train").batch(4096)
    frequencies = {
        "user": tes.search.count_frequencies(train.map(lambda x: x["user_id"]), probe.user_model),
        "item": tes.search.count_frequencies(
            train.map(lambda x: x["movie_title"]), probe.movie_model
        ),
    }
    num_rows = frequencies["user"].size + frequencies["item"].size
    budget = tes.Budget(sparsity=SPARSITY, d_max=EMBEDDING_DIMENSION)
    print(
        f"{users.size} ratings, {unique_user_ids.size} users, {unique_movie_titles.size} movies; "
        f"N = {num_rows} table rows (each lookup adds its out-of-vocabulary row); budget "
        f"B({SPARSITY}) = {budget.max_params_for(num_rows):,} of "
        f"{EMBEDDING_DIMENSION * num_rows:,}."
    )

    # 1-2. The search, through the model's own fit and metric.
    env = tes.search.FitEnvironment(
        build_model,
        train_data,
        metric,
        validation_data=validation,
        frequencies=frequencies,
        tables={"user_embedding": "user", "movie_embedding": "item"},
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
            monitor="quality",  # the tutorial's metric; BET's default is recall@20
            seed=args.seed,
        )
    else:
        controller = tes.controllers.ES(SPARSITY)
    run_dir = os.path.join(args.output, f"search-{args.method}")
    search = tes.search.run(controller, env, run_dir, verbose=0 if args.small else 1)
    plan = search.best_plan
    print(
        f"Search ({args.method}): {len(search.history)} steps in {search.elapsed:.0f}s; "
        f"full-size validation {metric} = {search.reference.quality:.4f}."
    )

    # 3. Train the plan from scratch as in the tutorial, then test.
    tf.keras.utils.set_random_seed(args.seed)
    model = build_model()
    plan.apply(model)
    plan.check(budget)  # raises rather than exceed the budget
    model.fit(train_data(), epochs=epochs, verbose=0)
    test = model.evaluate(dataset("test").batch(4096), return_dict=True, verbose=0)
    print(
        f"Sized model: {plan.total_params():,} usable parameters; test {metric} = "
        f"{test[metric]:.4f}."
    )

    # 4. Export the towers (only the kept parameters) and serve by raw ids.
    export_dir = os.path.join(args.output, "export")
    exported = tes.export.save_compressed(
        model, export_dir, query_tower="user_model", candidate_tower="movie_model", overwrite=True
    )
    served = tf.saved_model.load(exported.path)
    queries = tf.constant(unique_user_ids[:2])
    top = served.signatures["serving_default"](user_ids=queries, k=tf.constant(5))
    for user, movies in zip(unique_user_ids[:2], top["item_ids"].numpy(), strict=True):
        print(f"user {user}: {[m.decode() for m in movies]}")
    print(f"Done in {time.perf_counter() - t_start:.0f}s; outputs in {args.output}/.")
    return {
        "budget": budget.max_params_for(num_rows),
        "num_rows": num_rows,
        "usable_params": plan.total_params(),
        "reference_quality": search.reference.quality,
        "test": test[metric],
        "metric": metric,
        "steps": len(search.history),
        "export": exported.path,
        "top_items": top["item_ids"].numpy(),
        "model": model,
    }


if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    main()
