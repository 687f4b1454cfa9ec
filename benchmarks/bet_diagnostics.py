"""Why does (or doesn't) BET beat the uniform baseline? Diagnostics of a finished BET search.

Two parts, both read a protocol run's BET search (``OUT/work/bet__shared__seed<s>``) and its
pretrained reference model (``OUT/work/reference__seed<s>``), and neither changes them:

``--part finetune``
    BET's fitness is the validation quality ratio after h fine-tuning epochs from the
    pretrained full model. This part gives the baselines the *same* measurement: the plans of
    ES (uniform), frequency-proportional (power 1 and 0.5) and MR (random), plus the best
    archived BET action once more under a new step seed (the noise of one fitness value), and
    ``split-0.7`` (uniform within each side, 70 % of the budget to the users, the share the
    best archived actions have), at every sparsity of the search. If ES's fine-tuned fitness
    is at or above BET's best, the search never found an allocation better than uniform,
    whatever the surrogate did.
    Each fine-tuning is written to the JSON as it finishes; rerunning resumes (a resumed
    probe gets a different step seed, recorded).

``--part surrogate``
    How well could the DeepSets surrogate rank the archived actions? Leave-one-out over each
    sparsity's archive: a fresh surrogate (default sizes, seed 0) is trained on the other
    actions and predicts the held-out one, (a) with BET's online schedule (N = 2 single-pair
    updates after each archived action, in archive order, lr 0.01 x0.9 per update floored at
    0.002) and (b) with a generous schedule (400 single-pair updates at the same learning
    rates). Spearman(prediction, fitness) over the held-out actions, beside one hand
    feature, -|w - w*| with w the user side's budget share and w* the share of the best
    other action (also leave-one-out).

Usage:
    python benchmarks/bet_diagnostics.py --run benchmarks/results/paper_protocol/ml-1m_mf_bet \
        --dataset ml-1m --part finetune --jit-compile
    python benchmarks/bet_diagnostics.py --run benchmarks/results/paper_protocol/ml-1m_mf_bet \
        --dataset ml-1m --part surrogate
    python benchmarks/bet_diagnostics.py --run ... --dataset ml-1m --part report

Results: ``benchmarks/results/bet_diagnostics_<dataset>_<backbone>.{json,md}``.
"""

from __future__ import annotations

import argparse
import glob
import logging
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import RESULTS, command, diagnostics_stem, machine, now  # noqa: E402

from tfembsize import _io  # noqa: E402
from tfembsize.protocol.plan_stats import plan_share as _plan_share  # noqa: E402
from tfembsize.protocol.plan_stats import side_cv as _side_cv  # noqa: E402
from tfembsize.protocol.plan_stats import size_cv as _size_cv  # noqa: E402
from tfembsize.protocol.plan_stats import spearman_or_nan as _spearman  # noqa: E402
from tfembsize.protocol.plan_stats import split_plan as _split_plan  # noqa: E402
from tfembsize.protocol.plan_stats import user_share as _user_share  # noqa: E402

logger = logging.getLogger("bet_diagnostics")

PROBES = ("es", "frequency", "frequency-sqrt", "mr", "bet-best-reseeded", "split-0.7")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--run", required=True, help="the protocol run's output directory")
    p.add_argument("--dataset", required=True, help="the run's --dataset")
    p.add_argument("--backbone", default="mf")
    p.add_argument("--seed", type=int, default=0, help="the run's seed whose search to read")
    p.add_argument("--part", choices=("finetune", "surrogate", "report"), required=True)
    p.add_argument("--eval-every", type=int, default=None, help="the run's --eval-every")
    p.add_argument("--patience", type=int, default=None, help="the run's --patience")
    p.add_argument("--jit-compile", action="store_true", help="XLA optimiser steps")
    p.add_argument("--probes", default=",".join(PROBES), help=f"subset of {PROBES}")
    p.add_argument("--generous-updates", type=int, default=400)
    return p.parse_args(argv)


def _out_stem(args: argparse.Namespace) -> Path:
    return diagnostics_stem(args.dataset, args.backbone)


def _load(path: Path) -> dict:
    if path.exists():
        return _io.read_json(path, what="BET diagnostics")
    return {}


def _save(path: Path, payload: dict) -> None:
    _io.write_json(path, payload)


def _controller(args: argparse.Namespace) -> Any:
    from tfembsize.controllers import BETController

    directory = os.path.join(args.run, "work", f"bet__shared__seed{args.seed}", "checkpoints")
    latest = sorted(glob.glob(os.path.join(directory, "[0-9]*")))
    if not latest:
        raise FileNotFoundError(f"No BET checkpoint under {directory}.")
    return BETController.load(os.path.join(latest[-1], "controller"))


# Part 1: the baselines under BET's fine-tuning ----------------------------------------------
def finetune(args: argparse.Namespace) -> None:
    import paper_protocol

    from tfembsize.controllers import ES, MR, FrequencyProportional
    from tfembsize.data import load_dataset
    from tfembsize.metrics import RankingEvaluator
    from tfembsize.models import train_bpr
    from tfembsize.protocol.backbones import get_backbone
    from tfembsize.protocol.methods.bet import BETSettings, bet_finetune_config
    from tfembsize.search.environment import KerasEnvironment

    cli = ["--dataset", args.dataset, "--backbone", args.backbone, "--out", args.run]
    if args.eval_every:
        cli += ["--eval-every", str(args.eval_every)]
    if args.patience:
        cli += ["--patience", str(args.patience)]
    if args.jit_compile:
        cli.append("--jit-compile")
    config = paper_protocol.build_config(paper_protocol.parse_args(cli))
    recipe = config.train_config
    split = load_dataset(args.dataset).split(0.5, 0.25, 0.25, seed=42)
    builder = get_backbone(args.backbone)
    evaluator = RankingEvaluator(split, ks=(5, 10, 20))
    env = KerasEnvironment(
        lambda: builder(split, config.d_max, None),
        split,
        evaluator,
        train_config=bet_finetune_config(recipe),
        reference_config=recipe,
        final_config=recipe,
        train_fn=train_bpr,
        seed=args.seed,
        reference_directory=os.path.join(args.run, "work", f"reference__seed{args.seed}"),
    )
    reference = env.reference()
    controller = _controller(args)
    sparsities = tuple(float(s) for s in controller.sparsities)
    h = BETSettings.from_options({}, args.backbone).finetune_epochs
    observation = env.observation()
    static = {
        "es": ES(sparsities),
        "frequency": FrequencyProportional(sparsities),
        "frequency-sqrt": FrequencyProportional(sparsities, power=0.5),
        "mr": MR(sparsities, seed=args.seed),
    }
    stem = _out_stem(args)
    path = stem.with_suffix(".finetune.json")
    state = _load(path)
    state.setdefault("probes", {})
    state.update(
        {
            "run": os.path.relpath(args.run, RESULTS.parent.parent),
            "finetune_epochs": h,
            "finetune_recipe": bet_finetune_config(recipe).to_dict(),
            "reference_validation_quality": reference.quality,
        }
    )
    wanted = [p for p in args.probes.split(",") if p]
    for c in sparsities:
        archive = controller.archive(c)
        best = controller.top_actions(1, sparsity=c)[0]
        for probe in wanted:
            key = f"{probe}@{c:g}"
            if key in state["probes"]:
                continue
            if probe == "bet-best-reseeded":
                plan = best.plan
            elif probe.startswith("split-"):
                plan = _split_plan(controller.problem, c, float(probe.split("-", 1)[1]))
            else:
                plan = static[probe].plans(observation)[c]
            plan.check(controller.budgets[c])
            t0 = time.perf_counter()
            seed_index = env.seed + 1 + env._steps_done  # the step seed, for the record
            fb = env.step(plan, "snapshot", train_epochs=h)
            logger.info(
                "%s: fitness %.4f (BET best %.4f) in %.0f s",
                key,
                fb.quality_ratio,
                float(archive.fitness.max()),
                time.perf_counter() - t0,
            )
            state["probes"][key] = {
                "probe": probe,
                "sparsity": c,
                "fitness": fb.quality_ratio,
                "quality": fb.quality,
                "recall@20": fb.metrics.get("recall@20"),
                "usable_params": fb.usable_params,
                "budget": controller.budgets[c].max_params_for(
                    sum(len(plan[name]) for name in env.tables)
                ),
                "user_share": _plan_share(plan, env.tables),
                "step_seed": seed_index,
                "wall_time": fb.wall_time,
                "bet_best_fitness": float(archive.fitness.max()),
                "bet_best_iteration": best.iteration,
            }
            state["date"], state["command"], state["machine"] = now(), command(), machine()
            _save(path, state)


# Part 2: can the surrogate rank the archive? ------------------------------------------------
def surrogate(args: argparse.Namespace) -> None:
    from tfembsize.surrogates import DeepSetsSurrogate
    from tfembsize.surrogates.deepsets import SortedSizes

    controller = _controller(args)
    freqs = [controller.problem.user_frequencies, controller.problem.item_frequencies]
    out: dict[str, Any] = {}
    for c in controller.sparsities:
        c = float(c)
        archive = controller.archive(c)
        counts, fitness = archive.counts, archive.fitness
        n = len(archive)
        shares = np.array([_user_share(k) for k in counts])
        preds = {"online": np.zeros(n), "generous": np.zeros(n), "share": np.zeros(n)}
        t0 = time.perf_counter()
        for i in range(n):
            rest = [j for j in range(n) if j != i]
            best_other = rest[int(np.argmax(fitness[rest]))]
            preds["share"][i] = -abs(shares[i] - shares[best_other])
            for mode in ("online", "generous"):
                s = DeepSetsSurrogate(freqs, d_max=counts.shape[-1], seed=0)
                rng = np.random.default_rng(0)
                actions = [SortedSizes(k) for k in counts[rest]]
                if mode == "online":  # BET's schedule, replayed in archive order
                    for t in range(1, len(rest) + 1):
                        s.update(actions[:t], fitness[rest][:t], rng=rng, num_updates=2)
                else:
                    s.update(actions, fitness[rest], rng=rng, num_updates=args.generous_updates)
                preds[mode][i] = float(s.predict(SortedSizes(counts[i]))[0])
        in_sample = DeepSetsSurrogate(freqs, d_max=counts.shape[-1], seed=0)
        in_sample.update(
            [SortedSizes(k) for k in counts],
            fitness,
            rng=np.random.default_rng(0),
            num_updates=args.generous_updates,
        )
        fitted = in_sample.predict(SortedSizes(counts))
        out[f"{c:g}"] = {
            "n": n,
            "fitness_mean": float(fitness.mean()),
            "fitness_std": float(fitness.std()),
            "spearman_online_loo": _spearman(preds["online"], fitness),
            "spearman_generous_loo": _spearman(preds["generous"], fitness),
            "spearman_share_loo": _spearman(preds["share"], fitness),
            "spearman_generous_in_sample": _spearman(fitted, fitness),
            "rmse_online_loo": float(np.sqrt(np.mean((preds["online"] - fitness) ** 2))),
            "rmse_generous_loo": float(np.sqrt(np.mean((preds["generous"] - fitness) ** 2))),
            "rmse_mean_predictor": float(fitness.std()),
            "prediction_std_online": float(preds["online"].std()),
            "prediction_std_generous": float(preds["generous"].std()),
            "spearman_at_choice_time": _spearman(archive.predicted[5:], fitness[5:]),
            "seconds": time.perf_counter() - t0,
        }
        logger.info("c=%g: %s", c, out[f"{c:g}"])
    stem = _out_stem(args)
    path = stem.with_suffix(".surrogate.json")
    _save(
        path,
        {
            "run": os.path.relpath(args.run, RESULTS.parent.parent),
            "generous_updates": args.generous_updates,
            "by_sparsity": out,
            "date": now(),
            "command": command(),
            "machine": machine(),
        },
    )


# Part 3: what the archive says about the landscape ---------------------------------------------
def landscape(args: argparse.Namespace) -> dict:
    """Per sparsity: how fitness relates to the inequality of the sizes and to w (no training)."""
    controller = _controller(args)
    out = {}
    for c in controller.sparsities:
        archive = controller.archive(float(c))
        cv = np.array([_size_cv(k) for k in archive.counts])
        side_cv = np.array([_side_cv(k) for k in archive.counts])
        shares = np.array([_user_share(k) for k in archive.counts])
        best = int(np.argmax(archive.fitness))
        flattest = int(np.argmin(cv))
        # What the sampler offers: 5000 fresh candidates (a separate generator; the run's
        # own state is not touched).
        batch = controller.sampler(float(c)).sample(5000, np.random.default_rng(12345))
        cand_cv = np.array([_size_cv(k) for k in batch.counts])
        cand_side_cv = np.array([_side_cv(k) for k in batch.counts])
        out[f"{float(c):g}"] = {
            "n": len(archive),
            "spearman_minus_cv_fitness": _spearman(-cv, archive.fitness),
            "spearman_minus_side_cv_fitness": _spearman(-side_cv, archive.fitness),
            "side_cv_of_best": float(side_cv[best]),
            "side_cv_min": float(side_cv.min()),
            "candidates_side_cv_quantiles": {
                q: float(np.quantile(cand_side_cv, float(q))) for q in ("0.01", "0.1", "0.5")
            },
            "cv_min": float(cv.min()),
            "cv_median": float(np.median(cv)),
            "cv_of_best": float(cv[best]),
            "share_of_best": float(shares[best]),
            "fitness_best": float(archive.fitness[best]),
            "fitness_of_flattest": float(archive.fitness[flattest]),
            "cv_of_flattest": float(cv[flattest]),
            "candidates_cv_quantiles": {
                q: float(np.quantile(cand_cv, float(q))) for q in ("0.01", "0.1", "0.5")
            },
            "candidates_share_cv_below_0.2": float(np.mean(cand_cv < 0.2)),
            "candidates_share_cv_below_0.4": float(np.mean(cand_cv < 0.4)),
        }
    return out


# Report ---------------------------------------------------------------------------------------
def report(args: argparse.Namespace) -> None:
    stem = _out_stem(args)
    ft = _load(stem.with_suffix(".finetune.json"))
    sg = _load(stem.with_suffix(".surrogate.json"))
    ls = landscape(args)
    lines = [f"# BET diagnostics: {args.dataset}, {args.backbone.upper()}", ""]
    if ft:
        lines += [
            "## Baselines under BET's fine-tuning (same measurement as BET's fitness)",
            "",
            f"Fitness = validation quality ratio to the full model after h = "
            f"{ft['finetune_epochs']:g} fine-tuning epochs from the pretrained reference "
            f"(run `{ft['run']}`). w = user side's share of the parameters.",
            "",
            "| probe | c | fitness | BET best fitness | w | params (budget) |",
            "| --- | ---: | ---: | ---: | ---: | --- |",
        ]
        for rec in sorted(ft["probes"].values(), key=lambda r: (r["sparsity"], r["probe"])):
            lines.append(
                f"| {rec['probe']} | {rec['sparsity']:g} | {rec['fitness']:.4f} | "
                f"{rec['bet_best_fitness']:.4f} | {rec['user_share']:.2f} | "
                f"{rec['usable_params']:,} ({rec['budget']:,}) |"
            )
        lines += ["", f"command: {ft.get('command')}  ", f"date: {ft.get('date')}", ""]
    if sg:
        lines += [
            "## Can the surrogate rank the archive? (leave-one-out)",
            "",
            "| c | n | fitness std | Spearman online (BET schedule) | Spearman generous "
            f"({sg['generous_updates']} updates) | Spearman -abs(w - w*) | in-sample generous | "
            "RMSE online / generous / mean |",
            "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |",
        ]
        for c, r in sg["by_sparsity"].items():
            lines.append(
                f"| {c} | {r['n']} | {r['fitness_std']:.3f} | {r['spearman_online_loo']:.2f} | "
                f"{r['spearman_generous_loo']:.2f} | {r['spearman_share_loo']:.2f} | "
                f"{r['spearman_generous_in_sample']:.2f} | {r['rmse_online_loo']:.3f} / "
                f"{r['rmse_generous_loo']:.3f} / {r['rmse_mean_predictor']:.3f} |"
            )
        lines += ["", f"command: {sg.get('command')}  ", f"date: {sg.get('date')}", ""]
    lines += [
        "## Fitness against the inequality of the sizes (archive, no training)",
        "",
        "cv = coefficient of variation of the per-entity sizes (0 = uniform, ES has about 0).",
        "",
        "| c | n | Spearman(-cv, fitness) | cv min / median | best: fitness, cv, w | "
        "flattest: fitness, cv | sampler: cv 1% / 10% / 50% quantile | sampler: P(cv < 0.2), "
        "P(cv < 0.4) |",
        "| ---: | ---: | ---: | --- | --- | --- | --- | --- |",
    ]
    for c, r in ls.items():
        lines.append(
            f"| {c} | {r['n']} | {r['spearman_minus_cv_fitness']:.2f} | {r['cv_min']:.2f} / "
            f"{r['cv_median']:.2f} | {r['fitness_best']:.4f}, {r['cv_of_best']:.2f}, "
            f"{r['share_of_best']:.2f} | {r['fitness_of_flattest']:.4f}, "
            f"{r['cv_of_flattest']:.2f} | "
            + " / ".join(f"{v:.2f}" for v in r["candidates_cv_quantiles"].values())
            + f" | {r['candidates_share_cv_below_0.2']:.3f}, "
            f"{r['candidates_share_cv_below_0.4']:.3f} |"
        )
    lines += [
        "",
        "Within each side (side cv = mean of the users' and the items' cv; w moves the pooled "
        "cv but not this one):",
        "",
        "| c | Spearman(-side cv, fitness) | side cv min | side cv of best | sampler: side cv "
        "1% / 10% / 50% |",
        "| ---: | ---: | ---: | ---: | --- |",
    ]
    for c, r in ls.items():
        lines.append(
            f"| {c} | {r['spearman_minus_side_cv_fitness']:.2f} | {r['side_cv_min']:.2f} | "
            f"{r['side_cv_of_best']:.2f} | "
            + " / ".join(f"{v:.2f}" for v in r["candidates_side_cv_quantiles"].values())
            + " |"
        )
    lines += [
        "",
        "(sampler columns: 5000 fresh candidates from the run's sampler, generator seed 12345.)",
        "",
    ]
    path = stem.with_suffix(".md")
    path.write_text("\n".join(lines), encoding="utf-8")
    _save(stem.with_suffix(".json"), {"finetune": ft, "surrogate": sg, "landscape": ls})
    print("\n".join(lines))


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    {"finetune": finetune, "surrogate": surrogate, "report": report}[args.part](args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
