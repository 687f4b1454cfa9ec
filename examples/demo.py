"""End-to-end demo: BPR matrix factorisation with budgeted embedding tables (``make demo``).

What it does, in well under a minute on 2 CPU cores:

1. generates a synthetic implicit-feedback dataset with power-law user activity and item
   popularity, and holds out one interaction per user for a quick Recall@20 check;
2. builds user and item tables as ``BudgetedEmbedding`` layers at sparsity 0.9 (90 % of the
   ``N x 128`` table forced to zero), with sizes allocated by training frequency;
3. checks the budget: usable parameters <= floor((1 - 0.9) * 128 * N);
4. trains BPR-MF with Adam and prints the loss going down, then Recall@20 against a
   popularity baseline.

Later versions of the demo will run a size search (BET / CIESS), retrain and export.
Run it with either Keras: ``python examples/demo.py`` or
``TF_USE_LEGACY_KERAS=1 python examples/demo.py``.
"""

from __future__ import annotations

import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

import tfembsize as tes  # noqa: E402

SEED = 0
NUM_USERS, NUM_ITEMS = 3_000, 4_000
D_MAX = 128
SPARSITY = 0.9
BATCH, STEPS, LR, L2 = 1024, 1_000, 0.01, 1e-4


def synthetic_interactions(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Power-law users and items, with a low-rank taste structure so there is something to learn."""
    activity = np.minimum(5 + np.floor(rng.pareto(1.5, NUM_USERS) * 10), 300).astype(int)
    popularity = 1.0 / np.arange(1, NUM_ITEMS + 1) ** 0.8
    rng.shuffle(popularity)
    user_taste = rng.normal(size=(NUM_USERS, 8))
    item_taste = rng.normal(size=(NUM_ITEMS, 8))
    users, items = [], []
    for u in range(NUM_USERS):
        logits = item_taste @ user_taste[u] * 1.5 + np.log(popularity)
        p = np.exp(logits - logits.max())
        chosen = rng.choice(NUM_ITEMS, size=activity[u], replace=False, p=p / p.sum())
        users.append(np.full(activity[u], u))
        items.append(chosen)
    return np.concatenate(users).astype(np.int32), np.concatenate(items).astype(np.int32)


def hold_out_one(users, items, rng):  # noqa: ANN001, ANN201
    """One random interaction per user for testing, the rest for training."""
    order = rng.permutation(len(users))
    users, items = users[order], items[order]
    _, first = np.unique(users, return_index=True)
    test = np.zeros(len(users), bool)
    test[first] = True
    return (users[~test], items[~test]), (users[test], items[test])


class MF(tf.keras.Model):
    """Matrix factorisation: score(u, i) = <e_u, e_i>, with any embedding layers."""

    def __init__(self, user_embedding, item_embedding, **kwargs) -> None:  # noqa: ANN001
        super().__init__(**kwargs)
        self.user_embedding = user_embedding
        self.item_embedding = item_embedding

    def call(self, inputs: tuple[tf.Tensor, tf.Tensor]) -> tf.Tensor:
        users, items = inputs
        return tf.reduce_sum(self.user_embedding(users) * self.item_embedding(items), axis=-1)


class BPRSampler:
    """Users uniform, one random training positive, one uniform non-positive item."""

    def __init__(self, users: np.ndarray, items: np.ndarray, rng: np.random.Generator) -> None:
        order = np.lexsort((items, users))
        self.items = items[order]
        self.indptr = np.concatenate([[0], np.cumsum(np.bincount(users, minlength=NUM_USERS))])
        self.keys = np.unique(users.astype(np.int64) * NUM_ITEMS + items)
        self.rng = rng

    def sample(self, batch: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        u = self.rng.integers(0, NUM_USERS, batch)
        start, count = self.indptr[u], self.indptr[u + 1] - self.indptr[u]
        pos = self.items[start + (self.rng.random(batch) * count).astype(int)]
        neg = self.rng.integers(0, NUM_ITEMS, batch)
        for _ in range(20):  # resample negatives that are training positives
            query = u.astype(np.int64) * NUM_ITEMS + neg
            at = np.minimum(np.searchsorted(self.keys, query), len(self.keys) - 1)
            clash = self.keys[at] == query
            if not clash.any():
                break
            neg[clash] = self.rng.integers(0, NUM_ITEMS, int(clash.sum()))
        return u.astype(np.int32), pos.astype(np.int32), neg.astype(np.int32)


def main() -> int:
    t0 = time.perf_counter()
    rng = np.random.default_rng(SEED)
    tf.keras.utils.set_random_seed(SEED)
    users, items = synthetic_interactions(rng)
    (train_u, train_i), (test_u, test_i) = hold_out_one(users, items, rng)
    print(
        f"Synthetic data: {NUM_USERS} users, {NUM_ITEMS} items, {len(users)} interactions "
        f"({len(train_u)} train, {len(test_u)} held out)"
    )

    # Budgeted tables: sizes allocated by training frequency, never above the budget.
    user_freq = np.bincount(train_u, minlength=NUM_USERS)
    item_freq = np.bincount(train_i, minlength=NUM_ITEMS)
    init = tf.keras.initializers.RandomNormal(stddev=0.01, seed=SEED)
    user_emb = tes.layers.BudgetedEmbedding(
        NUM_USERS, D_MAX, sparsity=SPARSITY, allocation="frequency", frequencies=user_freq,
        embeddings_initializer=init, name="user_embedding",
    )  # fmt: skip
    item_emb = tes.layers.BudgetedEmbedding(
        NUM_ITEMS, D_MAX, sparsity=SPARSITY, allocation="frequency", frequencies=item_freq,
        embeddings_initializer=init, name="item_embedding",
    )  # fmt: skip

    # The budget spans both tables: B = floor((1 - c) * d_max * (|U| + |V|)).
    plan = tes.SizePlan({"user_embedding": user_emb.sizes, "item_embedding": item_emb.sizes})
    budget = tes.Budget(sparsity=SPARSITY, d_max=D_MAX)
    plan.check(budget)  # raises BudgetExceededError otherwise
    limit = budget.max_params_for(plan.num_rows())
    print(
        f"Usable params: {plan.total_params():,} / budget {limit:,} "
        f"(sparsity {SPARSITY}, d_max {D_MAX}, {plan.num_rows():,} rows; full table "
        f"{D_MAX * plan.num_rows():,})"
    )
    for name, layer in (("user", user_emb), ("item", item_emb)):
        s = layer.sizes
        print(
            f"  {name} sizes: min {s.min()}, median {int(np.median(s))}, max {s.max()}; "
            f"most frequent {name} gets {s[np.argmax(layer.frequencies)]}"
        )

    model = MF(user_emb, item_emb)
    model((tf.constant([0]), tf.constant([0])))  # build
    optimizer = tf.keras.optimizers.Adam(LR)
    variables = model.trainable_variables  # the two tables; sizes are not trainable

    @tf.function
    def train_step(u: tf.Tensor, i: tf.Tensor, j: tf.Tensor) -> tf.Tensor:
        with tf.GradientTape() as tape:
            eu, ei, ej = user_emb(u), item_emb(i), item_emb(j)
            x = tf.reduce_sum(eu * (ei - ej), axis=-1)  # = model((u, i)) - model((u, j))
            reg = tf.reduce_sum(eu**2) + tf.reduce_sum(ei**2) + tf.reduce_sum(ej**2)
            loss = tf.reduce_mean(tf.nn.softplus(-x)) + L2 * reg / BATCH
        grads = tape.gradient(loss, variables)
        optimizer.apply_gradients(zip(grads, variables, strict=True))
        return loss

    sampler = BPRSampler(train_u, train_i, rng)
    window, first, last = [], None, None
    for step in range(1, STEPS + 1):
        window.append(float(train_step(*sampler.sample(BATCH))))
        if step % 200 == 0:
            mean = float(np.mean(window))
            first = mean if first is None else first
            last = mean
            print(f"step {step:5d}  BPR loss {mean:.4f}")
            window = []

    # Recall@20 on the held-out item, excluding training items, vs. a popularity ranking.
    scores = tf.matmul(user_emb.masked_table(), item_emb.masked_table(), transpose_b=True).numpy()
    popularity = np.tile(item_freq.astype(float), (NUM_USERS, 1))
    hits = {}
    for label, s in (("BPR-MF (budgeted)", scores), ("popularity", popularity)):
        s = s.copy()
        s[train_u, train_i] = -np.inf
        top = np.argpartition(-s[test_u], 20, axis=1)[:, :20]
        hits[label] = float(np.mean(np.any(top == test_i[:, None], axis=1)))
        print(f"Recall@20 {label}: {hits[label]:.4f}")

    # The model's plan after training: still within budget.
    final = tes.SizePlan.from_model(model)
    final.check(budget)
    print(f"Final plan: {final}")
    print(f"Done in {time.perf_counter() - t0:.1f} s")
    if not last < first:
        print("ERROR: the training loss did not go down", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
