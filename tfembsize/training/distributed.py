"""`train_bpr` under a ``tf.distribute`` strategy: the compiled chunk loop with ``strategy.run``.

A model built inside ``strategy.scope()`` (``tf.distribute.MirroredStrategy``,
``MultiWorkerMirroredStrategy``, ``OneDeviceStrategy``) is trained by `train_bpr` when it
is called inside the same scope: every step splits the global batch over the replicas
(``strategy.experimental_distribute_dataset``), runs ``model.train_batch`` on each replica
with ``strategy.run`` (the backbone scales its loss by the number of replicas, so the summed
gradient is that of the global batch mean) and reduces the replicas' losses to their mean.
``ParameterServerStrategy`` schedules steps through a ``ClusterCoordinator`` instead of
``strategy.run`` in one process; `train_bpr` does not drive one (see docs/distribute.md).
"""

from __future__ import annotations

import logging
from typing import Any

import tensorflow as tf

__all__ = [
    "active_strategy",
    "check_strategy",
    "collect_losses",
    "distribute_dataset",
    "distributed_chunk_runner",
]

logger = logging.getLogger(__name__)


def active_strategy() -> Any:
    """The ``tf.distribute`` strategy whose scope is entered, or None for the default one."""
    if not tf.distribute.has_strategy():
        return None
    return tf.distribute.get_strategy()


def _is_parameter_server(strategy: Any) -> bool:
    names = {cls.__name__ for cls in type(strategy).__mro__}
    return bool(names & {"ParameterServerStrategyV2", "ParameterServerStrategy"})


def check_strategy(strategy: Any, hook: Any, refit: bool) -> None:
    """Raises ValueError for a strategy `train_bpr` cannot drive, naming what to do instead.

    Args:
        strategy: the active strategy (not None).
        hook: the training hook passed to `train_bpr`, or None.
        refit: the recipe's ``refit`` flag.
    """
    if _is_parameter_server(strategy):
        raise ValueError(
            "train_bpr runs steps with strategy.run in this process; a ParameterServerStrategy "
            "schedules them on workers through tf.distribute.experimental.coordinator."
            "ClusterCoordinator. Build the model inside strategy.scope() and schedule "
            "`model.train_batch` with the coordinator (see docs/distribute.md). Received: "
            f"{type(strategy).__name__}."
        )
    if hook is not None:
        raise ValueError(
            "A training hook (in-training controller) cannot run under a tf.distribute "
            "strategy: its in-graph actions assume one replica. Received hook "
            f"{type(hook).__name__} under {type(strategy).__name__}."
        )
    del refit  # a refit trains like the first run; nothing strategy-specific


def collect_losses(n: tf.Tensor, step: Any) -> tf.Tensor:
    """The chunk loop of `train_bpr`: ``step(i) -> (loss, go)`` for ``i < n`` while ``go``.

    Returns the losses of the steps taken, stacked (a ``tf.while_loop``, for use inside a
    ``tf.function``).
    """

    def cond(i: tf.Tensor, go: tf.Tensor, losses: tf.TensorArray) -> tf.Tensor:
        return tf.logical_and(i < n, go)

    def body(
        i: tf.Tensor, go: tf.Tensor, losses: tf.TensorArray
    ) -> tuple[tf.Tensor, tf.Tensor, tf.TensorArray]:
        loss, go = step(i)
        return i + 1, go, losses.write(i, loss)

    init = (
        tf.constant(0, tf.int32),
        tf.constant(True),
        tf.TensorArray(tf.float32, size=0, dynamic_size=True),
    )
    _, _, losses = tf.while_loop(cond, body, init)
    return losses.stack()


def distributed_chunk_runner(model: Any, strategy: Any) -> Any:
    """The compiled chunk loop of `train_bpr` with one ``strategy.run`` per optimiser step.

    ``runner(iterator, n, start)`` takes an iterator over a distributed dataset and returns
    the losses (mean over replicas) of up to ``n`` steps; it stops after a non-finite loss.
    ``start`` is accepted for the signature of the single-device loop. XLA is not used: the
    replicas' steps and their all-reduce run as ordinary TensorFlow ops.
    """

    def replica_step(batch: Any) -> tf.Tensor:
        return model.train_batch(batch).loss

    def run(iterator: Any, n: tf.Tensor, start: tf.Tensor) -> tf.Tensor:
        del start

        def step(i: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
            per_replica = strategy.run(replica_step, args=(next(iterator),))
            loss = strategy.reduce(tf.distribute.ReduceOp.MEAN, per_replica, axis=None)
            return loss, tf.math.is_finite(loss)

        return collect_losses(n, step)

    runner = tf.function(run, autograph=False)
    runner._omit_frequent_tracing_warning = True
    return runner


def distribute_dataset(strategy: Any, dataset: Any) -> Any:
    """``dataset`` (global batches) split over the strategy's replicas."""
    return strategy.experimental_distribute_dataset(dataset)
