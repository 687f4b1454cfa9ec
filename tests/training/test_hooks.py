"""The per-batch seam of train_bpr: TrainingHook in the compiled loop, HookCallback under fit."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf

from tfembsize._keras import keras
from tfembsize.data import bpr_dataset, synthetic
from tfembsize.models import MF
from tfembsize.training import HookCallback, TrainConfig, TrainingHook, train_bpr


def _split():
    return synthetic(30, 40, 400, seed=0).split(0.5, 0.25, 0.25, seed=42)


class StepRecorder(TrainingHook):
    """Counts batches in graph, stops a chunk at ``stop_at``, records host calls."""

    def __init__(self, stop_at=None, done_at=None):
        self.stop_at = stop_at
        self.done_at = done_at
        self.chunks = []
        self.ended = None

    def on_train_begin(self, model, optimizer):
        self.before = tf.Variable(0, dtype=tf.int64)
        self.after = tf.Variable(0, dtype=tf.int64)
        self.last_step = tf.Variable(0, dtype=tf.int32)

    def before_batch(self, batch, step):
        self.before.assign_add(1)

    def after_batch(self, batch, loss, step):
        self.after.assign_add(1)
        self.last_step.assign(step)
        if self.stop_at is None:
            return None
        return tf.equal(step, self.stop_at)

    def on_chunk_end(self, step, losses):
        self.chunks.append((step, int(losses.size), int(self.last_step.numpy())))
        return {"seen": float(self.after.numpy())}

    def on_train_end(self, step):
        self.ended = step

    @property
    def done(self):
        return self.done_at is not None and bool(self.chunks) and self.chunks[-1][0] >= self.done_at

    def get_state(self):
        return {"chunks": self.chunks}

    def set_state(self, state):
        self.chunks = [tuple(c) for c in state.get("chunks", [])]


@pytest.mark.parametrize("jit_compile", [False, True])
def test_hook_runs_around_every_batch_and_can_end_a_chunk(jit_compile):
    split = _split()
    model = MF.create(split.num_users, split.num_items, 4)
    hook = StepRecorder(stop_at=7)
    config = TrainConfig(batch_size=16, max_steps=20, eval_every=10, jit_compile=jit_compile)
    result = train_bpr(model, split, None, config=config, hook=hook)
    # chunk 1 ends after step 7 (the hook asked), then runs on to the boundary at 10
    assert hook.chunks == [(7, 7, 7), (10, 3, 10), (20, 10, 20)]
    assert int(hook.before.numpy()) == int(hook.after.numpy()) == 20
    assert result.steps == 20 and result.best_step == 20 and result.validation is None
    assert [h.step for h in result.history] == [10, 20]
    assert result.history[0].metrics == {"seen": 10.0} and np.isnan(result.history[0].value)
    assert hook.ended == 20


def test_hook_done_stops_training_and_the_state_resumes(tmp_path):
    split = _split()
    config = TrainConfig(batch_size=16, max_steps=50, eval_every=10)
    hook = StepRecorder(done_at=20)
    result = train_bpr(
        MF.create(split.num_users, split.num_items, 4),
        split,
        None,
        config=config,
        hook=hook,
        checkpoint_dir=tmp_path,
    )
    assert result.steps == 20 and hook.ended == 20
    again = StepRecorder(done_at=20)
    rerun = train_bpr(
        MF.create(split.num_users, split.num_items, 4),
        split,
        None,
        config=config,
        hook=again,
        checkpoint_dir=tmp_path,
    )
    assert rerun.steps == 20 and again.chunks == hook.chunks  # restored from the checkpoint
    # a hook with work left continues a finished run when max_steps is raised
    later = StepRecorder(done_at=30)
    more = train_bpr(
        MF.create(split.num_users, split.num_items, 4),
        split,
        None,
        config=config,
        hook=later,
        checkpoint_dir=tmp_path,
    )
    assert more.steps == 30 and later.chunks[-1][0] == 30


class SumIds(TrainingHook):
    """Adds up the batches' user ids in a variable (saved with the checkpoints)."""

    def on_train_begin(self, model, optimizer):
        self.total = tf.Variable(0, dtype=tf.int64)
        self.batches = tf.Variable(tf.zeros([3], tf.int32))

    def after_batch(self, batch, loss, step):
        self.total.assign_add(tf.reduce_sum(tf.cast(batch["user"], tf.int64)))
        self.batches.assign(tf.tensor_scatter_nd_add(self.batches, [[step % 3]], [1]))
        return None

    def variables(self):
        return [self.total, self.batches]


def test_hook_variables_are_checkpointed_and_restored(tmp_path):
    split = _split()

    def run(max_steps, directory, hook=None):
        hook = hook or SumIds()
        config = TrainConfig(batch_size=16, max_steps=max_steps, eval_every=4)
        model = MF.create(split.num_users, split.num_items, 4)
        train_bpr(model, split, None, config=config, hook=hook, checkpoint_dir=directory)
        return hook

    whole = run(10, None)
    run(6, tmp_path)  # stopped after 6 steps ...
    resumed = run(10, tmp_path)  # ... and continued: the sums went on from the saved ones
    assert int(resumed.total.numpy()) == int(whole.total.numpy()) > 0
    assert resumed.batches.numpy().tolist() == whole.batches.numpy().tolist() == [3, 4, 3]
    latest = tmp_path / (tmp_path / "LATEST").read_text().strip()
    assert (latest / "hook.npz").is_file()

    class Wider(SumIds):
        def on_train_begin(self, model, optimizer):
            super().on_train_begin(model, optimizer)
            self.batches = tf.Variable(tf.zeros([4], tf.int32))

    with pytest.raises(ValueError, match="hook_variables"):
        run(12, tmp_path, Wider())


def test_refit_rejects_hooks_and_missing_evaluators():
    split = _split()
    model = MF.create(split.num_users, split.num_items, 4)
    with pytest.raises(ValueError, match="`refit=True` needs an evaluator"):
        train_bpr(model, split, None, config=TrainConfig(refit=True))


def test_hook_callback_drives_the_host_part_under_fit():
    split = _split()
    model = MF.create(split.num_users, split.num_items, 4)
    model.compile(optimizer=keras.optimizers.Adam(1e-3))
    hook = StepRecorder(done_at=6)
    hook.on_train_begin(model, None)
    callback = HookCallback(hook, check_every=3)
    model.fit(
        bpr_dataset(split.train, 16, seed=0),
        steps_per_epoch=5,
        epochs=4,
        verbose=0,
        callbacks=[callback],
    )
    assert [c[0] for c in hook.chunks] == [3, 6]  # stopped once done at step 6
    assert all(c[1] == 3 for c in hook.chunks) and hook.ended == 6


def test_hook_callback_arguments():
    class GraphOnly(TrainingHook):
        requires_graph_hooks = True

    with pytest.raises(
        ValueError, match="`check_every` must be a positive integer. Received: check_every=0"
    ):
        HookCallback(TrainingHook(), check_every=0)
    with pytest.raises(ValueError, match="GraphOnly acts inside the compiled training step"):
        HookCallback(GraphOnly())
