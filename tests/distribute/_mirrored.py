"""Runs in a subprocess (two logical CPUs must be set before TensorFlow starts its devices).

Prints one JSON line: per layer kind, the largest difference between the weights after the
same steps on one device and under MirroredStrategy; train_bpr and KerasEnvironment results.
"""

from __future__ import annotations

import json
import sys
import tempfile

import tensorflow as tf

cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)

import numpy as np  # noqa: E402
from _models import KINDS, B, batches, make, max_difference, train_single  # noqa: E402

from tfembsize._keras import keras  # noqa: E402
from tfembsize.layers._soft_threshold import tf_variable  # noqa: E402

# One strategy per process: a second MirroredStrategy reuses collective instance keys and
# fails with "Shape mismatch in the collective instance".
STRATEGY = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])


def layers() -> dict:
    out = {}
    for kind in KINDS:
        _, single, single_losses = train_single(kind)
        keras.backend.clear_session()
        with STRATEGY.scope():
            model = make(kind)
        data = batches()
        ds = tf.data.Dataset.from_tensor_slices(
            {k: np.concatenate([b[k] for b in data]) for k in data[0]}
        ).batch(B)
        it = iter(STRATEGY.experimental_distribute_dataset(ds))

        @tf.function
        def step(it, model=model):
            per_replica = STRATEGY.run(lambda x: model.train_batch(x).loss, args=(next(it),))
            return STRATEGY.reduce("MEAN", per_replica, axis=None)

        losses = [float(step(it)) for _ in data]
        out[kind] = {
            "weights": max_difference(single, [np.asarray(v.numpy()) for v in model.weights]),
            "losses": float(np.max(np.abs(np.subtract(single_losses, losses)))),
            "variable": type(tf_variable(model.user_embedding.weights[0])).__name__,
        }
    return out


def split():
    from tfembsize.data import synthetic

    return synthetic(60, 80, 1200, seed=0).split(0.5, 0.25, 0.25, seed=42)


def train_loop() -> dict:
    from tfembsize.metrics import RankingEvaluator
    from tfembsize.models import MF, TrainConfig, train_bpr

    data = split()
    evaluator = RankingEvaluator(data)
    config = TrainConfig(
        learning_rate=0.01, batch_size=64, max_steps=20, eval_every=10, patience=5
    ).replace(jit_compile=False)
    results = []
    for scope in (None, STRATEGY):
        keras.utils.set_random_seed(7)
        if scope is None:
            model = MF.create(data.num_users, data.num_items, 8)
            res = train_bpr(model, data, evaluator, config=config)
        else:
            with scope.scope():
                model = MF.create(data.num_users, data.num_items, 8)
                res = train_bpr(model, data, evaluator, config=config)
        results.append((model.get_weights(), res.best_value, res.final_loss))
    return {
        "weights": max_difference(results[0][0], results[1][0]),
        "value": abs(results[0][1] - results[1][1]),
        "loss": abs(results[0][2] - results[1][2]),
    }


def search() -> dict:
    from tfembsize.budget import Budget
    from tfembsize.controllers import BETController, CIESSController
    from tfembsize.layers.utils import model_usage
    from tfembsize.metrics import RankingEvaluator
    from tfembsize.models import MF, TrainConfig
    from tfembsize.search import KerasEnvironment, run

    data = split()
    evaluator = RankingEvaluator(data)
    config = TrainConfig(learning_rate=0.01, batch_size=64, max_steps=10, eval_every=10)
    out = {}
    controllers = {
        "bet": lambda: BETController(
            sparsity=0.5, seed=0, search_iterations=2, num_candidates=4, top_k=1
        ),
        "ciess": lambda: CIESSController(
            0.5, episodes=1, iterations=2, top_k=1, seed=0, hidden=(8, 8), batch_size=32
        ),
    }
    for name, make_controller in controllers.items():
        env = KerasEnvironment(
            lambda: MF.create(data.num_users, data.num_items, 8),
            data,
            evaluator,
            train_config=config,
            reference_config=config,
            strategy=STRATEGY,
        )
        with tempfile.TemporaryDirectory() as tmp:
            result = run(make_controller(), env, tmp, verbose=0, tensorboard=False)
        plan = result.best_plan
        records = list(result.history)
        _, rows = model_usage(env.model)
        out[name] = {
            "steps": len(records),
            "ok": [bool(r.feedback.ok) for r in records],
            "finite": all(np.isfinite(r.feedback.quality) for r in records if r.feedback.ok),
            "variable": type(tf_variable(env.model.user_embedding.embeddings)).__name__,
            "plan_params": None if plan is None else int(plan.total_params()),
            "budget": Budget(sparsity=0.5, d_max=8).max_params_for(rows),
        }
    return out


if __name__ == "__main__":
    parts = sys.argv[1:] or ["layers", "train_loop", "search"]
    report = {part: globals()[part]() for part in parts}
    print("RESULT " + json.dumps(report))
