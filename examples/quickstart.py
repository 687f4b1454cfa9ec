"""Quickstart: swap ``tf.keras.layers.Embedding`` for ``MaskedEmbedding`` and give rows sizes.

Run with ``python examples/quickstart.py`` (Keras 3) or
``TF_USE_LEGACY_KERAS=1 python examples/quickstart.py`` (tf-keras, needed by TFRS).
"""

from __future__ import annotations

import os
import tempfile

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

import tfembsize as tes  # noqa: E402

NUM_USERS, NUM_ITEMS, DIM = 1_000, 2_000, 128

# 1. A two-tower model as you would write it with plain Keras ...
#      user_embedding = tf.keras.layers.Embedding(NUM_USERS, DIM, name="user_embedding")
#    ... becomes (same arguments, same call, same outputs while every row is full):
user_embedding = tes.layers.MaskedEmbedding(NUM_USERS, DIM, name="user_embedding")
item_embedding = tes.layers.MaskedEmbedding(NUM_ITEMS, DIM, name="item_embedding")

users = tf.keras.Input(shape=(), dtype="int32", name="user")
items = tf.keras.Input(shape=(), dtype="int32", name="item")
score = tf.keras.layers.Dot(axes=-1)([user_embedding(users), item_embedding(items)])
model = tf.keras.Model([users, items], score)

print("sizes before:", user_embedding.sizes[:5], "usable params:", user_embedding.usable_params())

# 2. Give every row its own size: row n keeps its first d_n coordinates, the rest are zero
#    (and get no gradient and no regularisation).
rng = np.random.default_rng(0)
user_embedding.assign_sizes(rng.integers(1, DIM + 1, size=NUM_USERS))
out = user_embedding(tf.constant([0]))
print(f"user 0 has size {user_embedding.sizes[0]}: nonzeros in its vector =",
      int(tf.math.count_nonzero(out)))  # fmt: skip

# 3. A SizePlan holds sizes for several tables; a Budget spans them all:
#    B = floor((1 - sparsity) * d_max * (num_users + num_items)).
budget = tes.Budget(sparsity=0.9, d_max=DIM)
plan = tes.SizePlan.from_model(model)
print("plan:", plan, "fits 90% sparsity?", plan.fits(budget))
plan = plan.repair(budget)  # cut the largest rows first until the plan fits
plan.apply(model)  # assigns sizes to the layers by name
print(f"after repair: {plan.total_params():,} usable params <= budget "
      f"{budget.max_params_for(plan.num_rows()):,}")  # fmt: skip

with tempfile.TemporaryDirectory() as tmp:
    path = os.path.join(tmp, "plan.json")
    plan.save(path)  # JSON or .npz, never pickle
    assert tes.SizePlan.load(path) == plan

# 4. BudgetedEmbedding keeps a table under its own budget at every moment.
budgeted = tes.layers.BudgetedEmbedding(NUM_ITEMS, DIM, sparsity=0.9, name="budgeted")
print("uniform allocation:", budgeted.sizes[:5], "usable", budgeted.usable_params(),
      "budget", budgeted.max_params)  # fmt: skip
try:
    budgeted.assign_sizes(np.full(NUM_ITEMS, DIM))
except tes.BudgetExceededError as err:
    print("rejected:", err)
budgeted.assign_sizes(np.full(NUM_ITEMS, DIM), repair=True)
print("repaired:", budgeted.usable_params(), "<=", budgeted.max_params)

# 5. Train and save as usual: sizes live in a non-trainable variable, so checkpoints and
#    saved models carry them.
model.compile(optimizer="adam", loss="mse")
x = [rng.integers(0, NUM_USERS, 256), rng.integers(0, NUM_ITEMS, 256)]
model.fit(x, np.ones(256), epochs=1, verbose=0)
with tempfile.TemporaryDirectory() as tmp:
    path = os.path.join(tmp, "model.keras")
    model.save(path)
    loaded = tf.keras.models.load_model(path)
    same = np.array_equal(loaded.get_layer("user_embedding").sizes, user_embedding.sizes)
    print("sizes survive save/load:", same)
