"""`run_esapn`: ESAPN over the stream of training interactions, checkpointed and resumable."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from typing import Any

from tfembsize.controllers.esapn.config import ESAPNConfig
from tfembsize.controllers.esapn.controller import ESAPNController
from tfembsize.data.stream import InteractionStream, stream_dataset
from tfembsize.training.loop import train_bpr
from tfembsize.training.outcome import TrainResult

__all__ = ["ESAPNRun", "run_esapn"]


@dataclass(frozen=True, eq=False)
class ESAPNRun:
    """The outcome of `run_esapn`.

    Attributes:
        controller: the controller (attached to the trained model).
        train: `train_bpr`'s result (no validation ran while the stream did).
        summary: `ESAPNController.summary` at the end of the stream.
        steps: batches of the stream.
        wall_time: seconds.
    """

    controller: ESAPNController
    train: TrainResult
    summary: dict[str, Any] = field(default_factory=dict)
    steps: int = 0
    wall_time: float = 0.0


def run_esapn(
    model: Any,
    split: Any,
    config: ESAPNConfig | None = None,
    *,
    directory: str | os.PathLike[str] | None = None,
    verbose: int = 0,
) -> ESAPNRun:
    """Trains a ladder backbone once over the training stream with an `ESAPNController`.

    The stream is `tfembsize.data.stream_dataset` over ``split.train``: ``config.epochs``
    passes over the training interactions, each in an order shuffled with ``config.seed``,
    in batches of ``config.batch_size``. Training is `tfembsize.training.train_bpr` with
    the controller as its hook, Adam at ``config.learning_rate``, no validation while the
    stream runs and the last weights kept (the end-of-stream model is the result). With a
    ``directory`` the run is checkpointed after every ``chunk_steps`` steps (model,
    optimiser, the controller's buffers, policies and their optimisers) and calling
    `run_esapn` again with a model built the same way continues from there.

    Args:
        model: a backbone whose user and item tables are `LadderEmbedding` layers
            (`esapn_model`).
        split: the data split (only ``split.train`` is used).
        config: the recipe (default `ESAPNConfig()`).
        directory: where the checkpoints live (None: not resumable).
        verbose: 1 for a progress bar.

    Returns:
        An `ESAPNRun`.
    """
    config = config or ESAPNConfig()
    t0 = time.perf_counter()
    controller = ESAPNController(config).attach(model)
    stream = InteractionStream(
        split.train, config.batch_size, seed=config.seed, epochs=config.epochs
    )

    def batches(interactions: Any, start: int) -> Any:
        return stream_dataset(
            interactions,
            config.batch_size,
            seed=config.seed,
            epochs=config.epochs,
            start_step=start,
        )

    result = train_bpr(
        model,
        split,
        None,
        config=config.train_config(stream.num_steps, seed=config.seed, verbose=verbose),
        checkpoint_dir=None if directory is None else os.fspath(directory),
        hook=controller,
        batches=batches,
    )
    return ESAPNRun(
        controller=controller,
        train=result,
        summary=controller.summary(),
        steps=stream.num_steps,
        wall_time=time.perf_counter() - t0,
    )
