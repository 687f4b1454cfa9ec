import numpy as np
import pytest

from tfembsize.controllers import ES
from tfembsize.data import synthetic
from tfembsize.metrics import RankingEvaluator
from tfembsize.models import MF, NonFiniteLossError, TrainConfig, train_bpr
from tfembsize.plan import SizePlan
from tfembsize.search import Feedback, KerasEnvironment, infer_tables, load_history, run

D = 8
CONFIG = TrainConfig(learning_rate=0.01, batch_size=128, max_steps=40, eval_every=20, patience=2)


@pytest.fixture(scope="module")
def split():
    return synthetic(60, 80, 1200, seed=0).split(0.5, 0.25, 0.25, seed=42)


@pytest.fixture(scope="module")
def evaluator(split):
    return RankingEvaluator(split)


class Recorder:
    """train_fn that records the table the training started from, then trains for real."""

    def __init__(self):
        self.starts = []
        self.calls = 0

    def __call__(self, model, split, evaluator, *, config):
        self.calls += 1
        self.starts.append(np.array(model.user_embedding.embeddings.numpy()))
        self.configs = getattr(self, "configs", []) + [config]
        return train_bpr(model, split, evaluator, config=config)


def _env(split, evaluator, **kw):
    kw.setdefault("train_config", CONFIG.replace(max_steps=20))
    kw.setdefault("reference_config", CONFIG)
    return KerasEnvironment(
        lambda: MF.create(split.num_users, split.num_items, D), split, evaluator, **kw
    )


def _plan(split, size):
    return SizePlan(
        {
            "user_embedding": np.full(split.num_users, size),
            "item_embedding": np.full(split.num_items, size),
        }
    )


def test_observation_reference_and_snapshot_step(split, evaluator):
    rec = Recorder()
    env = _env(split, evaluator, train_fn=rec, seed=3)
    obs = env.observation()
    assert obs.tables == {"user_embedding": "user", "item_embedding": "item"}
    assert obs.d_max == D and obs.num_rows == split.num_users + split.num_items
    np.testing.assert_array_equal(obs.item_frequencies, split.item_frequencies)
    ref = obs.reference
    assert ref.ok and ref.usable_params == D * obs.num_rows and ref.quality > 0
    assert rec.calls == 1 and rec.configs[0].evaluate_test is False
    env.observation()
    assert rec.calls == 1  # pretrained once, cached
    pretrained = np.array(env.model.user_embedding.embeddings.numpy())

    fb = env.step(_plan(split, 2), "snapshot", train_steps=5)
    np.testing.assert_array_equal(rec.starts[-1], pretrained)  # started from the snapshot
    assert rec.configs[-1].max_steps == 5 and rec.configs[-1].eval_every == 5
    assert fb.ok and fb.mode == "snapshot" and fb.train_steps == 5
    assert fb.usable_params == 2 * obs.num_rows
    assert fb.quality_ratio == pytest.approx(fb.quality / ref.quality)
    peak = np.maximum(ref.user_quality, 1e-5)
    np.testing.assert_allclose(fb.user_quality_ratio, np.minimum(fb.user_quality / peak, 1))
    assert fb.item_quality_ratio.max() <= 1.0
    assert {"recall@20", "ndcg@20", "recall@5", "ndcg@5"} <= set(fb.metrics)

    after = np.array(env.model.user_embedding.embeddings.numpy())
    env.step(_plan(split, 3), "continue", train_steps=5)
    np.testing.assert_array_equal(rec.starts[-1], after)  # continued from the last weights
    env.step(_plan(split, 3), "scratch", train_steps=5)
    assert not np.allclose(rec.starts[-1], pretrained)  # fresh initialisation
    env.restore()
    np.testing.assert_array_equal(env.model.user_embedding.embeddings.numpy(), pretrained)
    # epochs convert with the recipe's batch size: ceil(|train| / 128) steps per epoch
    env.step(_plan(split, 3), "snapshot", train_epochs=2)
    per_epoch = -(-split.train.num_interactions // 128)
    assert per_epoch == 5  # 600 train interactions, batch 128
    assert rec.configs[-1].max_steps == 2 * per_epoch and rec.configs[-1].eval_every == 10
    env.step(_plan(split, 3), "snapshot", train_epochs=0.5)
    assert rec.configs[-1].max_steps == 3  # ceil(0.5 * 5): an epoch is ceil(|train|/b) steps
    with pytest.raises(ValueError, match="Pass at most one of `train_steps` and `train_epochs`"):
        env.step(_plan(split, 3), "snapshot", train_steps=2, train_epochs=1)
    env.step(_plan(split, 3), "scratch", phase="final")
    assert rec.configs[-1].max_steps == CONFIG.max_steps  # final phase: the full recipe


def test_nan_makes_the_step_fail(split, evaluator):
    def diverging(model, split, evaluator, *, config):
        raise NonFiniteLossError(7, float("nan"), 0.01)

    env = _env(split, evaluator, train_fn=diverging, reference=False)
    fb = env.step(_plan(split, 2), "scratch", train_steps=10)
    assert not fb.ok and np.isnan(fb.quality)
    assert "Training diverged: the BPR loss is nan at step 7" in fb.message
    assert fb.usable_params == 2 * (split.num_users + split.num_items)

    def nan_weights(model, split, evaluator, *, config):
        result = train_bpr(model, split, evaluator, config=config)
        table = model.user_embedding.embeddings
        table.assign(np.full(table.shape, np.nan, np.float32))
        return result

    env = _env(split, evaluator, train_fn=nan_weights, reference=False)
    fb = env.step(_plan(split, 2), "scratch", train_steps=5)
    assert not fb.ok and "the weights or the final loss are not finite" in fb.message


def test_reference_is_persisted_and_search_resumes(split, evaluator, tmp_path):
    rec = Recorder()
    env = _env(split, evaluator, train_fn=rec)
    ctrl = ES(sparsity=(0.5, 0.75), seed=0)
    first = run(ctrl, env, tmp_path, iterations=1, verbose=0, tensorboard=False)
    assert rec.calls == 2  # pretraining + one final training
    assert (tmp_path / "env" / "reference_weights.npz").exists()
    assert len(first.history) == 1 and first.history[0].info["phase"] == "final"

    rec2 = Recorder()
    env2 = _env(split, evaluator, train_fn=rec2)
    result = run(ES(sparsity=(0.5, 0.75), seed=0), env2, tmp_path, verbose=0, tensorboard=False)
    assert rec2.calls == 1  # the reference came from disk: no pretraining again
    assert env2.reference() == env.reference()
    assert result.finished and len(result.history) == 2
    assert result.history[0].feedback == first.history[0].feedback
    assert set(result.plans) == {0.5, 0.75}
    assert result.plans[0.75].total_params() == 2 * (split.num_users + split.num_items)
    assert result.per_sparsity[0.75].iteration == 1
    assert load_history(tmp_path)[1].feedback.quality_ratio is not None


def test_model_instance_scratch_resets_to_initial_weights(split, evaluator):
    model = MF.create(split.num_users, split.num_items, D)
    initial = np.array(model.user_embedding.embeddings.numpy())
    rec = Recorder()
    env = KerasEnvironment(
        model, split, evaluator, train_config=CONFIG, reference=False, train_fn=rec
    )
    env.step(_plan(split, 4), "scratch", train_steps=5)
    env.step(_plan(split, 4), "scratch", train_steps=5)
    np.testing.assert_array_equal(rec.starts[0], initial)
    np.testing.assert_array_equal(rec.starts[1], initial)
    with pytest.raises(ValueError, match="No snapshot to restore: call snapshot\\(\\) first"):
        env.step(_plan(split, 4), "snapshot", train_steps=5)
    env.snapshot()
    snap = np.array(model.user_embedding.embeddings.numpy())
    env.step(_plan(split, 4), "snapshot", train_steps=5)
    np.testing.assert_array_equal(rec.starts[-1], snap)


def test_errors(split, evaluator):
    env = _env(split, evaluator, reference=False)
    with pytest.raises(ValueError, match=r"`mode` must be one of .*Received: mode='warm'"):
        env.step(_plan(split, 2), "warm")
    with pytest.raises(ValueError, match=r"`plan` has no sizes for searchable layers \['item_"):
        env.step(SizePlan({"user_embedding": np.full(split.num_users, 2)}))
    with pytest.raises(TypeError, match="`split` must be a tfembsize.data.Split"):
        KerasEnvironment(lambda: None, object(), evaluator)
    with pytest.raises(ValueError, match="`reference` is a failed Feedback"):
        _env(split, evaluator, reference=Feedback.failed("x"))
    other = MF.create(split.num_users + 1, split.num_items, D)
    with pytest.raises(ValueError, match="has input_dim=61; the split has 60 users"):
        KerasEnvironment(other, split, evaluator, reference=False)


def test_infer_tables_of_ncf():
    from tfembsize.models import NCF

    model = NCF.create(5, 7, 4)
    assert infer_tables(model) == {
        "user_embedding": "user",
        "user_embedding_mlp": "user",
        "item_embedding": "item",
        "item_embedding_mlp": "item",
    }


class _KilledError(RuntimeError):
    pass


class KilledOnce:
    """train_bpr with checkpoints whose first call dies at its second validation."""

    def __init__(self):
        self.checkpoint_dirs = []
        self.validations = 0

    def __call__(self, model, split, evaluator, *, config, checkpoint_dir=None):
        self.checkpoint_dirs.append(checkpoint_dir)
        first = len(self.checkpoint_dirs) == 1
        outer = self

        class Dying:
            def __getattr__(self, name):
                return getattr(evaluator, name)

            def evaluate(self, *args, **kwargs):
                if kwargs.get("phase", "validation") == "validation":
                    outer.validations += 1
                    if first and outer.validations == 2:
                        raise _KilledError("killed during the pretraining")
                return evaluator.evaluate(*args, **kwargs)

        return train_bpr(model, split, Dying(), config=config, checkpoint_dir=checkpoint_dir)


def test_killed_reference_pretraining_resumes_from_its_checkpoint(split, evaluator, tmp_path):
    expected = _env(split, evaluator, seed=5).reference()  # uninterrupted, no directory

    fn = KilledOnce()
    with pytest.raises(_KilledError):
        _env(split, evaluator, seed=5, train_fn=fn, reference_directory=tmp_path).reference()
    checkpoint = tmp_path / "pretraining"
    assert fn.checkpoint_dirs == [str(checkpoint)]
    assert (checkpoint / "LATEST").read_text().startswith("step-000000020")

    env = _env(split, evaluator, seed=5, train_fn=fn, reference_directory=tmp_path)
    got = env.reference()
    assert fn.validations == 3  # the resumed run evaluated only its second chunk (step 40)
    assert got.train_steps == expected.train_steps == 40
    assert got.quality == pytest.approx(expected.quality, abs=1e-9)
    assert got.wall_time > 0
    assert not checkpoint.exists()  # replaced by the stored reference
    assert (tmp_path / "reference.npz").exists()
