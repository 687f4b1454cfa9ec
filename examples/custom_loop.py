"""A search environment of your own: a ``tf.GradientTape`` training loop behind the protocol.

The search loop (`tfembsize.search.run`) does not train anything: it asks the controller
for a size plan, hands it to an *environment* and tells the controller what came back. Any
object with four methods is an environment:

* ``observation()`` -> `tfembsize.search.Observation`: which tables embed users and items,
  the training frequencies, the full width ``d_max`` and the full-size reference's feedback;
* ``step(plan, mode, *, train_steps=None, train_epochs=None, phase="search")`` ->
  `tfembsize.search.Feedback`: apply the sizes, train (from scratch, from the snapshot, or
  on), evaluate on validation;
* ``snapshot()`` / ``restore()``: keep the current weights in memory / put them back.

Here the environment trains BPR matrix factorisation with a hand-written ``tf.GradientTape``
loop and scores it with `tfembsize.metrics.RankingEvaluator`, which gives the per-user and
per-item quality CIESS needs as well as the aggregate quality of BET and ES. BET searches
sizes at sparsity 0.9 with it; ES (uniform sizes) gives the baseline at the same budget.

Runs under Keras 3 and tf-keras: ``python examples/custom_loop.py [--data-dir DIR]``
(ML-100K in ``DIR/ml-100k``, default ``../shared/data``) or ``--small`` (synthetic data).
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

import tfembsize as tes  # noqa: E402
from tfembsize.search import Feedback, Observation  # noqa: E402

keras = tf.keras
SPARSITY = 0.9


class GradientTapeEnvironment:
    """BPR-MF with ``MaskedEmbedding`` tables, trained by a ``tf.GradientTape`` loop."""

    def __init__(self, split, *, d_max=32, batch_size=256, epochs=10, learning_rate=0.01, seed=0):
        self.split, self.d_max, self.batch_size = split, d_max, batch_size
        self.epochs, self.learning_rate, self.seed = epochs, learning_rate, seed
        self.evaluator = tes.metrics.RankingEvaluator(split)
        self.rng = np.random.default_rng(seed)
        self.model = self._build()
        # The full-size model, trained once: the denominator of the quality ratios and the
        # snapshot that "snapshot" steps (BET's fine-tuning) start from.
        self.reference = self._train_and_evaluate(self.epochs * self._epoch_steps(), "scratch")
        self.snapshot()

    # The four methods of the protocol -----------------------------------------------------
    def observation(self) -> Observation:
        return Observation(
            tables={"user_embedding": "user", "item_embedding": "item"},
            user_frequencies=self.split.user_frequencies,  # training interactions per row
            item_frequencies=self.split.item_frequencies,
            d_max=self.d_max,
            reference=self.reference,
        )

    def step(self, plan, mode="scratch", *, train_steps=None, train_epochs=None, phase="search"):
        if mode == "scratch":
            self.model = self._build()  # fresh random initialisation
        elif mode == "snapshot":
            self.restore()  # the pretrained full-size model
        plan.apply(self.model)  # "continue": on from the current weights
        if train_steps is None:  # the decision's length, else the full recipe
            epochs = self.epochs if train_epochs is None else train_epochs
            train_steps = max(1, math.ceil(epochs * self._epoch_steps()))
        return self._train_and_evaluate(train_steps, mode, phase)

    def snapshot(self) -> None:
        self._snapshot = [np.array(w) for w in self.model.get_weights()]

    def restore(self) -> None:
        self.model.set_weights(self._snapshot)

    # The training loop --------------------------------------------------------------------
    def _build(self) -> keras.Model:
        users = keras.Input((), dtype="int32", name="user")
        items = keras.Input((), dtype="int32", name="item")
        init = keras.initializers.RandomNormal(stddev=0.1, seed=int(self.rng.integers(2**31)))
        user_table = tes.layers.MaskedEmbedding(
            self.split.num_users, self.d_max, embeddings_initializer=init, name="user_embedding"
        )
        item_table = tes.layers.MaskedEmbedding(
            self.split.num_items, self.d_max, embeddings_initializer=init, name="item_embedding"
        )
        score = keras.layers.Dot(axes=-1)([user_table(users), item_table(items)])
        return keras.Model([users, items], score)

    def _epoch_steps(self) -> int:
        return math.ceil(self.split.train.num_interactions / self.batch_size)

    def _train_and_evaluate(self, steps: int, mode: str, phase: str = "search") -> Feedback:
        t0 = time.perf_counter()
        user_table = self.model.get_layer("user_embedding")
        item_table = self.model.get_layer("item_embedding")
        variables = self.model.trainable_variables
        optimizer = keras.optimizers.Adam(self.learning_rate)  # fresh state every step
        optimizer.build(variables)

        @tf.function
        def train_step(u, i, j):
            with tf.GradientTape() as tape:
                pu, qi, qj = user_table(u), item_table(i), item_table(j)
                margin = tf.reduce_sum(pu * (qi - qj), axis=-1)
                l2 = tf.reduce_mean(tf.reduce_sum(pu**2 + qi**2 + qj**2, axis=-1))
                loss = -tf.reduce_mean(tf.math.log_sigmoid(margin)) + 1e-4 * l2
            optimizer.apply_gradients(zip(tape.gradient(loss, variables), variables, strict=True))
            return loss

        train = self.split.train
        loss = float("nan")
        for _ in range(steps):
            pick = self.rng.integers(0, train.num_interactions, self.batch_size)
            negatives = self.rng.integers(0, self.split.num_items, self.batch_size)
            loss = float(train_step(train.users[pick], train.items[pick], negatives))
            if not math.isfinite(loss):  # a diverged step is a failed step, not numbers
                return Feedback.failed(f"the BPR loss is {loss}", mode=mode, train_steps=steps)
        result = self.evaluator.evaluate(
            (user_table(tf.range(self.split.num_users)), item_table(tf.range(self.split.num_items)))
        )
        feedback = Feedback(
            quality=result.quality,  # mean over users of Q_u: what BET and ES use
            user_quality=result.user_quality,  # per user and per item: what CIESS uses
            item_quality=result.item_quality,
            usable_params=user_table.usable_params() + item_table.usable_params(),
            wall_time=time.perf_counter() - t0,
            metrics={"recall@20": result.recall_at(20), "ndcg@20": result.ndcg_at(20)},
            mode=mode,
            train_steps=steps,
            loss=loss,
            info={"phase": phase},
        )
        # Quality ratios to the full-size model (None while the reference is being trained).
        return feedback.with_reference(getattr(self, "reference", None))


def main(argv: list[str] | None = None) -> dict:
    """Runs BET and ES with the environment; returns their numbers (the tests check them)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--data-dir", default=str(Path(__file__).resolve().parents[2] / "shared" / "data")
    )
    parser.add_argument("--small", action="store_true", help="synthetic data, a short search")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    keras.utils.set_random_seed(args.seed)
    if args.small:
        data = tes.data.synthetic(150, 200, 4000, seed=args.seed)
    else:
        data = tes.data.load_movielens(Path(args.data_dir) / "ml-100k")
    split = data.split(0.5, 0.25, 0.25, seed=42)
    env = GradientTapeEnvironment(split, epochs=5 if args.small else 20, seed=args.seed)
    print(f"Full-size reference: validation quality {env.reference.quality:.4f}")

    bet = tes.controllers.BETController(
        SPARSITY,
        search_iterations=3 if args.small else 20,
        num_candidates=10 if args.small else 100,
        finetune_epochs=1,
        top_k=1 if args.small else 3,
        seed=args.seed,
    )
    es = tes.controllers.ES(SPARSITY)
    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, controller in (("bet", bet), ("es", es)):
            result = tes.search.run(controller, env, os.path.join(tmp, name), verbose=0)
            answer = result.per_sparsity[SPARSITY]
            out[name] = answer.feedback
            print(
                f"{name}: {len(result.history)} steps; retrained answer: validation quality "
                f"{answer.feedback.quality:.4f} ({answer.feedback.quality_ratio:.2f} of full size) "
                f"with {answer.plan.total_params():,} usable parameters"
            )
    out["budget"] = tes.Budget(sparsity=SPARSITY, d_max=env.d_max).max_params_for(
        split.num_users + split.num_items
    )
    return out


if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    main()
