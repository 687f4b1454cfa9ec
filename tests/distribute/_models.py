"""Tiny models and batches shared by the subprocess scripts of tests/distribute."""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from tfembsize._keras import keras
from tfembsize.layers import BudgetedEmbedding, LadderEmbedding, MaskedEmbedding, PEPEmbedding
from tfembsize.models import MF

KINDS = ("masked", "budgeted", "pep", "ladder")
NU, NI, D, B, STEPS = 40, 30, 8, 16, 5


def batches() -> list[dict]:
    rng = np.random.default_rng(0)
    return [
        {
            "user": rng.integers(0, NU, B).astype(np.int32),
            "pos_item": rng.integers(0, NI, B).astype(np.int32),
            "neg_item": rng.integers(0, NI, B).astype(np.int32),
        }
        for _ in range(STEPS)
    ]


def make(kind: str) -> MF:
    """MF with two tables of ``kind``; fixed initialisers; Adam (SGD for the ladder)."""

    def kw(seed: int) -> dict:
        return {"embeddings_initializer": keras.initializers.RandomNormal(0, 0.1, seed=seed)}

    if kind == "masked":
        u, i = MaskedEmbedding(NU, D, name="u", **kw(1)), MaskedEmbedding(NI, D, name="i", **kw(2))
    elif kind == "budgeted":
        u = BudgetedEmbedding(NU, D, sparsity=0.5, allocation="random", seed=1, name="u", **kw(1))
        i = BudgetedEmbedding(NI, D, sparsity=0.5, allocation="random", seed=2, name="i", **kw(2))
    elif kind == "pep":
        u = PEPEmbedding(NU, D, threshold_init=-3.0, name="u", **kw(1))
        i = PEPEmbedding(NI, D, threshold_init=-3.0, name="i", **kw(2))
    else:
        glorot = keras.initializers.GlorotUniform
        u = LadderEmbedding(NU, (2, 4, 8), name="u", kernel_initializer=glorot(3), **kw(1))
        i = LadderEmbedding(NI, (2, 4, 8), name="i", kernel_initializer=glorot(4), **kw(2))
    model = MF(u, i, l2=1e-3)
    if kind == "ladder":
        u.assign_rungs(np.arange(NU) % 3)
        i.assign_rungs(np.arange(NI) % 3)
    # Adam rescales a gradient that is zero up to rounding (the ladder's map biases before
    # the normalisation) into a full step, so the ladder is compared under SGD.
    opt = keras.optimizers.SGD(0.5) if kind == "ladder" else keras.optimizers.Adam(0.05)
    model.compile(optimizer=opt)
    opt.build(model.trainable_variables)
    return model


def train_single(kind: str) -> tuple[list[np.ndarray], list[np.ndarray], list[float]]:
    """Initial weights, final weights and losses of a single-device run."""
    model = make(kind)
    init = [np.asarray(v.numpy()) for v in model.weights]
    step = tf.function(lambda b: model.train_batch(b).loss)
    losses = [float(step(b)) for b in batches()]
    return init, [np.asarray(v.numpy()) for v in model.weights], losses


def max_difference(a: list[np.ndarray], b: list[np.ndarray]) -> float:
    assert len(a) == len(b), (len(a), len(b))
    return max(
        float(np.max(np.abs(x.astype(np.float64) - y.astype(np.float64)), initial=0.0))
        for x, y in zip(a, b, strict=True)
    )
