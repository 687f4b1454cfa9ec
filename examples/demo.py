"""End-to-end demo: size search -> retraining -> compressed SavedModel (``make demo``).

On the built-in synthetic dataset (power-law users and items, no files needed), in a few
minutes on 2 CPU cores:

1. splits the interactions 50/25/25 per user (the papers' protocol) and pretrains a full-size
   BPR-MF model (128-wide `MaskedEmbedding` tables) as the search's reference;
2. runs a short BET search (`tfembsize.controllers.BETController`) for sparsity 0.9: budgeted
   candidate size plans, a DeepSets fitness predictor, each chosen plan fine-tuned from the
   reference and scored on validation. The run directory can be resumed after a crash;
3. retrains the best plan from scratch (early stopping on validation), checks the budget
   ``usable params <= floor((1 - 0.9) * 128 * N)`` and compares test Recall@20 with the
   uniform-size baseline (ES) at the same budget and with popularity;
4. exports a compressed SavedModel (only the kept parameters are stored), prints its size
   report, reloads it with plain TensorFlow and serves top-10 items for a few users.

The search is far shorter than the paper's (T=6 iterations of m=50 candidates instead of
50 x 100) so that the demo stays quick; ``benchmarks/paper_protocol.py`` runs the real thing.
Run it with either Keras: ``python examples/demo.py`` or
``TF_USE_LEGACY_KERAS=1 python examples/demo.py``. Arguments: ``[output_dir]`` (default
``./demo_output``; rerunning resumes the search there).
"""

from __future__ import annotations

import logging
import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

import tfembsize as tes  # noqa: E402

SEED = 0
SPARSITY = 0.9
D_MAX = 128
RECIPE = tes.models.TrainConfig(
    learning_rate=3e-3,
    batch_size=1024,
    max_steps=4000,
    eval_every=100,
    patience=4,
    seed=SEED,
    jit_compile=True,
)


def main(out_dir: str) -> dict:
    """Runs the demo; returns its numbers (the tests check them)."""
    t_start = time.perf_counter()
    data = tes.data.synthetic(num_users=1500, num_items=2000, num_interactions=120_000, seed=SEED)
    split = data.split(0.5, 0.25, 0.25, seed=42)
    evaluator = tes.metrics.RankingEvaluator(split)
    budget = tes.Budget(sparsity=SPARSITY, d_max=D_MAX)
    rows = split.num_users + split.num_items
    print(
        f"Data: {split.num_users} users, {split.num_items} items, "
        f"{data.num_interactions} interactions; budget B(0.9) = {budget.max_params_for(rows):,} "
        f"usable parameters (full tables: {D_MAX * rows:,})."
    )

    def build() -> tes.models.MF:
        return tes.models.MF.create(split.num_users, split.num_items, D_MAX)

    # 1-2. Search. The environment pretrains the reference once and fine-tunes each decision.
    env = tes.search.KerasEnvironment(
        build,
        split,
        evaluator,
        train_config=RECIPE.replace(evaluate_test=False),
        reference_config=RECIPE,
        final_config=RECIPE,
        seed=SEED,
        reference_directory=os.path.join(out_dir, "reference"),
    )
    controller = tes.controllers.BETController(
        sparsity=SPARSITY,
        search_iterations=6,
        num_candidates=50,
        finetune_epochs=2,
        top_k=1,
        retrain=False,
        seed=SEED,
    )
    search = tes.search.run(controller, env, os.path.join(out_dir, "search"), verbose=1)
    plan = search.best_plan
    print(
        f"Search: {len(search.history)} steps in {search.elapsed:.0f}s; best validation "
        f"fitness {search.best.feedback.quality / search.reference.quality:.3f} of full size."
    )

    # 3. Retrain from scratch under the protocol; compare with ES and popularity on test.
    def retrain(plan: tes.SizePlan) -> tuple[tes.models.MF, float]:
        tf.keras.utils.set_random_seed(SEED)
        model = build()
        plan.apply(model)
        plan.check(budget)  # raises BudgetExceededError rather than exceed it
        result = tes.models.train_bpr(model, split, evaluator, config=RECIPE)
        return model, result.test.recall_at(20)

    model, bet_recall = retrain(plan)
    es_plan = tes.SizePlan(
        {
            "user_embedding": np.full(split.num_users, int((1 - SPARSITY) * D_MAX)),
            "item_embedding": np.full(split.num_items, int((1 - SPARSITY) * D_MAX)),
        }
    )
    _, es_recall = retrain(es_plan)
    popularity = evaluator.evaluate(
        tes.models.popularity_scorer(split.train), phase="test"
    ).recall_at(20)
    used = plan.total_params()
    print(
        f"Test Recall@20: BET {bet_recall:.4f}, ES {es_recall:.4f}, popularity "
        f"{popularity:.4f}; BET uses {used:,} of {budget.max_params_for(rows):,} parameters."
    )

    # 4. Compressed export, reloaded without tfembsize's help.
    export_dir = os.path.join(out_dir, "export")
    exported = tes.export.save_compressed(model, export_dir, overwrite=True)
    report = tes.export.compression_report(export_dir)
    print(report)
    loaded = tf.saved_model.load(exported.path)
    out = loaded.signatures["serving_default"](
        user_ids=tf.constant([0, 1, 2], tf.int64), k=tf.constant(10)
    )
    print("Top-10 items of users 0-2 from the compressed SavedModel:")
    print(out["item_ids"].numpy())
    print(f"Done in {time.perf_counter() - t_start:.0f}s. Outputs in {out_dir}/.")
    return {
        "bet_recall": bet_recall,
        "es_recall": es_recall,
        "popularity_recall": popularity,
        "usable_params": used,
        "budget": budget.max_params_for(rows),
        "export": exported.path,
        "top_items": out["item_ids"].numpy(),
    }


if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    main(sys.argv[1] if len(sys.argv) > 1 else "demo_output")
