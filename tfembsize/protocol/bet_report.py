"""BET against ES and MR from a paper-protocol run: the evidence table.

Reads OUT/results.json written by the protocol's command line (methods bet, es, mr and
optionally the ablations bet-random and bet-sizes-only) and writes
``<results>/<name>.{json,md}`` (default name ``bet_<dataset>_<backbone>``) with
`tfembsize.protocol.provenance.write_results`:

- test R@20 / N@20 of BET, ES and MR per sparsity (mean ± std over seeds), whether BET beats
  both, and ``ratio_vs_es`` (BET R@20 / ES R@20) beside the BET paper's ratio of the same
  sparsity (its LightGCN rows on Gowalla; the paper has neither MF nor ML-1M);
- ``search_vs_full_train_ratio``: BET's search wall time per sparsity (T iterations of
  fine-tuning and the predictor's work, summed over resumes) over the wall time of one full
  training of the backbone measured in the same run (the pretraining of BET's reference);
- the ablation of the paper's Table 2 where present (predictor vs random selection vs a
  predictor that sees only sizes);
- T, m, h, K, the fine-tuning recipe and the popularity baseline.

`main` is the command line (``benchmarks/bet_report.py`` runs it with the benchmarks' results
folder):

    python benchmarks/bet_report.py benchmarks/results/paper_protocol/gowalla_mf
    python benchmarks/bet_report.py OUT --name bet_gowalla_mf
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tfembsize import _io
from tfembsize.protocol.paper import paper_cell
from tfembsize.protocol.report import spearman

__all__ = ["proxy_vs_retraining", "build_report", "read_note", "diagnostics_stem", "main"]

PAPER_DATASET = "gowalla"  # the BET paper's data set with ES/MR rows
PAPER_BACKBONE = "lightgcn"
PAPER_BACKBONES = ("lightgcn", "ngcf", "ncf")  # all of the paper's BET/ES columns
ABLATIONS = ("bet", "bet-random", "bet-sizes-only")


def _stat(row: dict | None, metric: str) -> dict | None:
    if row is None:
        return None
    s = row[f"test_{metric}"]
    return {"mean": s["mean"], "std": s["std"], "n": row["n"]}


def _ratio(a: float | None, b: float | None) -> float | None:
    if a is None or b is None or not b or math.isnan(a) or math.isnan(b):
        return None
    return a / b


def proxy_vs_retraining(results: dict, diagnostics: dict | None = None) -> dict:
    """Does BET's search proxy agree with retraining from scratch? Per sparsity (seed 0 cells).

    For each of BET's retrained top-K actions: its search fitness (validation quality ratio
    after h fine-tuning epochs) beside its validation Recall@20 after retraining, and their
    Spearman correlation. With ``diagnostics`` (the ``.finetune.json`` of
    ``benchmarks/bet_diagnostics.py``, which measures ES's plan under the same fine-tuning),
    also ES's fitness beside ES's retrained validation Recall@20: if BET's best beats ES by
    the proxy but not after retraining, the proxy, not the search, is what fails.

    Args:
        results: the parsed ``results.json`` of the protocol's command line.
        diagnostics: the parsed diagnostics file, or None.
    """
    cells = {
        (c["method"], c["sparsity"]): c
        for c in results.get("cells", [])
        if c["seed"] == 0 and c["sparsity"] is not None  # not the unpruned `full` cell
    }
    probes = (diagnostics or {}).get("probes", {})
    out = {}
    for (method, c), cell in sorted(cells.items(), key=lambda kv: kv[0][1]):
        if method != "bet":
            continue
        candidates = cell["info"].get("candidates", [])
        fitness = [float(k["search_fitness"]) for k in candidates]
        retrained = [float(k["validation"]["recall@20"]) for k in candidates]
        rho = spearman(fitness, retrained)
        rank = cell["info"].get("chosen_rank", 0)
        chosen = next((k for k in candidates if k.get("rank") == rank), None)
        entry: dict[str, Any] = {
            "candidates": [
                {"search_fitness": f, "retrained_validation_recall@20": r}
                for f, r in zip(fitness, retrained, strict=True)
            ],
            "spearman_fitness_vs_retrained": rho,
            "bet_chosen_fitness": None if chosen is None else float(chosen["search_fitness"]),
            "bet_chosen_validation_recall@20": cell["validation"]["recall@20"],
            "es_fitness": None,
            "es_validation_recall@20": None,
        }
        es_probe = probes.get(f"es@{c:g}")
        if es_probe is not None:
            entry["es_fitness"] = float(es_probe["fitness"])
        if ("es", c) in cells:
            entry["es_validation_recall@20"] = cells[("es", c)]["validation"]["recall@20"]
        out[f"{c:g}"] = entry
    return out


def build_report(
    results: dict, source: str = "", note: str = "", diagnostics: dict | None = None
) -> tuple[dict, str]:
    """The payload and the markdown of the report from a protocol ``results.json``.

    Args:
        results: the parsed ``results.json`` of the protocol's command line.
        source: its path (recorded).
        note: free text for the report (e.g. why T differs from the paper's 50).
        diagnostics: the ``bet_diagnostics.py`` fine-tuning probes of the same run, if any
            (adds ES's fitness to the proxy-vs-retraining table).
    """
    cfg = results["config"]
    rows = {(r["method"], r["sparsity"]): r for r in results["summary"]}
    sparsities = sorted({c for _, c in rows if c is not None})
    times = results.get("search_time", {}).get("bet", {})
    table = []
    for c in sparsities:
        bet, es, mr = (rows.get((m, c)) for m in ("bet", "es", "mr"))
        entry: dict[str, Any] = {"sparsity": c}
        for name, row in (("bet", bet), ("es", es), ("mr", mr)):
            entry[name] = None
            if row is not None:
                entry[name] = {m: _stat(row, m) for m in ("recall@20", "ndcg@20")}
                entry[name]["usable_params"] = row["usable_params"]["mean"]
                entry[name]["budget"] = row["budget"]

        def mean(name: str, metric: str, entry: dict = entry) -> float | None:
            v = entry.get(name)
            return None if v is None else v[metric]["mean"]

        paper_bet = paper_cell(PAPER_DATASET, PAPER_BACKBONE, "bet", c)
        paper_es = paper_cell(PAPER_DATASET, PAPER_BACKBONE, "es", c)
        entry["ratio_vs_es"] = _ratio(mean("bet", "recall@20"), mean("es", "recall@20"))
        entry["ndcg_ratio_vs_es"] = _ratio(mean("bet", "ndcg@20"), mean("es", "ndcg@20"))
        entry["paper_ratio_vs_es"] = (
            _ratio(paper_bet.recall20, paper_es.recall20) if paper_bet.available else None
        )
        entry["paper_ratio_vs_es_by_backbone"] = {}
        for backbone in PAPER_BACKBONES:
            pb = paper_cell(PAPER_DATASET, backbone, "bet", c)
            pe = paper_cell(PAPER_DATASET, backbone, "es", c)
            entry["paper_ratio_vs_es_by_backbone"][backbone] = (
                _ratio(pb.recall20, pe.recall20) if pb.available and pe.available else None
            )
        entry["paper"] = {
            m: {"recall@20": p.recall20, "ndcg@20": p.ndcg20}
            for m, p in (("bet", paper_bet), ("es", paper_es))
            if p.available
        }
        for other in ("es", "mr"):
            a, b = mean("bet", "recall@20"), mean(other, "recall@20")
            entry[f"bet_beats_{other}"] = None if a is None or b is None else a > b
        t = times.get(f"{c:g}")
        entry["search_time"] = None if t is None else t["search_time"]
        entry["full_train_time"] = None if t is None else t["full_train_time"]
        entry["search_vs_full_train_ratio"] = None if t is None else t["search_vs_full_train_ratio"]
        table.append(entry)

    ablation = {}
    for c in sparsities:
        present = {m: rows[(m, c)] for m in ABLATIONS if (m, c) in rows}
        if len(present) > 1:
            ablation[f"{c:g}"] = {
                m: {k: _stat(r, k) for k in ("recall@20", "ndcg@20")} for m, r in present.items()
            }
    bet_cells = [cell for cell in results.get("cells", []) if cell["method"] == "bet"]
    settings = bet_cells[0]["info"].get("settings") if bet_cells else None
    recipe = bet_cells[0]["info"].get("finetune_recipe") if bet_cells else None
    payload = {
        "source": source,
        "protocol_command": results.get("command"),
        "protocol_date": results.get("date"),
        "dataset": cfg["name"],
        "backbone": cfg["backbone"],
        "seeds": cfg["seeds"],
        "num_entities": results["dataset"]["num_entities"],
        "recipe": results["recipe"],
        "bet_settings": settings,
        "bet_finetune_recipe": recipe,
        "method_options": cfg.get("method_options", {}),
        "rows": table,
        "proxy_vs_retraining": proxy_vs_retraining(results, diagnostics),
        "ratio_vs_es": {f"{e['sparsity']:g}": e["ratio_vs_es"] for e in table},
        "paper_ratio_vs_es": {f"{e['sparsity']:g}": e["paper_ratio_vs_es"] for e in table},
        "paper_ratio_source": f"BET paper (WSDM 2024) {PAPER_DATASET} {PAPER_BACKBONE} rows",
        "paper_ratio_vs_es_by_backbone": {
            f"{e['sparsity']:g}": e["paper_ratio_vs_es_by_backbone"] for e in table
        },
        "search_vs_full_train_ratio": {
            f"{e['sparsity']:g}": e["search_vs_full_train_ratio"] for e in table
        },
        "ablation": ablation,
        "popularity": results.get("popularity"),
        "pending": results.get("pending", []),
        "note": note,
    }
    return payload, _markdown(payload)


def _fmt(stat: dict | None) -> str:
    if stat is None or stat["mean"] is None or math.isnan(stat["mean"]):
        return "—"
    if stat["n"] > 1:
        return f"{stat['mean']:.4f} ± {stat['std']:.4f}"
    return f"{stat['mean']:.4f}"


def _num(x: float | None, digits: int = 3) -> str:
    return "—" if x is None else f"{x:.{digits}f}"


def _markdown(p: dict) -> str:
    s = p["bet_settings"] or {}
    lines = [
        f"# BET vs ES vs MR: {p['dataset']}, {p['backbone'].upper()} backbone",
        "",
        f"Paper protocol: retrained from scratch with early stopping on validation, "
        f"test ranks all items; seeds {p['seeds']}, N = {p['num_entities']:,} rows. BET: "
        f"T = {s.get('search_iterations', '—')}, m = {s.get('num_candidates', '—')}, "
        f"h = {s.get('finetune_epochs', '—')}, top K = {s.get('top_k', '—')} retrained, "
        "chosen on validation.",
        "",
        "| c | BET R@20 | ES R@20 | MR R@20 | BET N@20 | ES N@20 | MR N@20 | BET/ES R@20 | "
        "paper BET/ES R@20 | BET > ES, MR | paper BET/ES R@20, LightGCN / NGCF / NCF |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for e in p["rows"]:

        def get(m: str, metric: str, e: dict = e) -> dict | None:
            return None if e[m] is None else e[m][metric]

        beats = "—"
        if e["bet_beats_es"] is not None and e["bet_beats_mr"] is not None:
            beats = "yes" if e["bet_beats_es"] and e["bet_beats_mr"] else "no"
        lines.append(
            f"| {e['sparsity']:.0%} | {_fmt(get('bet', 'recall@20'))} | "
            f"{_fmt(get('es', 'recall@20'))} | {_fmt(get('mr', 'recall@20'))} | "
            f"{_fmt(get('bet', 'ndcg@20'))} | {_fmt(get('es', 'ndcg@20'))} | "
            f"{_fmt(get('mr', 'ndcg@20'))} | {_num(e['ratio_vs_es'])} | "
            f"{_num(e['paper_ratio_vs_es'])} | {beats} | "
            + " / ".join(_num(v) for v in e["paper_ratio_vs_es_by_backbone"].values())
            + " |"
        )
    lines += [
        "",
        f"Paper ratio: {p['paper_ratio_source']} (the paper has no MF column; it is the "
        "closest published BET/ES comparison). The last column gives all three of the paper's "
        "backbones: its gains over ES come from LightGCN; with NGCF and NCF, BET is within "
        "about 5 % of ES either way.",
        "",
        "| c | search s | one full training s | search_vs_full_train_ratio |",
        "| --- | --- | --- | --- |",
    ]
    for e in p["rows"]:
        lines.append(
            f"| {e['sparsity']:.0%} | {_num(e['search_time'], 0)} | "
            f"{_num(e['full_train_time'], 0)} | {_num(e['search_vs_full_train_ratio'], 2)} |"
        )
    lines += [
        "",
        "Search time: BET's T iterations at that sparsity (sampling, predictor, fine-tuning, "
        "validation), summed over resumes; full training: the reference model's pretraining "
        "(the same recipe and early stopping as every retraining) in the same run.",
    ]
    if p["ablation"]:
        lines += ["", "Ablation (paper Table 2):", "", "| c | method | R@20 | N@20 |"]
        lines.append("| --- | --- | --- | --- |")
        for c, by_method in p["ablation"].items():
            for m, st in by_method.items():
                lines.append(
                    f"| {float(c):.0%} | {m} | {_fmt(st['recall@20'])} | {_fmt(st['ndcg@20'])} |"
                )
    proxy = p.get("proxy_vs_retraining") or {}
    if proxy:
        lines += [
            "",
            "Search proxy vs retraining (validation only): BET's fitness (quality ratio after "
            "h fine-tuning epochs from the pretrained full model) against the validation "
            "R@20 of the same action retrained from scratch; ES's fitness comes from "
            "`bet_diagnostics.py --part finetune` where it was run.",
            "",
            "| c | BET chosen: fitness, retrained val R@20 | ES: fitness, retrained val R@20 | "
            "Spearman(fitness, retrained) over the top K | top K: fitness -> val R@20 |",
            "| --- | --- | --- | --- | --- |",
        ]
        for c, e in proxy.items():
            pairs = ", ".join(
                f"{k['search_fitness']:.3f} -> {k['retrained_validation_recall@20']:.4f}"
                for k in e["candidates"]
            )
            lines.append(
                f"| {float(c):.0%} | {_num(e['bet_chosen_fitness'])}, "
                f"{_num(e['bet_chosen_validation_recall@20'], 4)} | {_num(e['es_fitness'])}, "
                f"{_num(e['es_validation_recall@20'], 4)} | "
                f"{_num(e['spearman_fitness_vs_retrained'], 2)} | {pairs} |"
            )
    pop = (p.get("popularity") or {}).get("test")
    if pop:
        lines += [
            "",
            f"Popularity baseline (test): R@20 {pop['recall@20']:.4f}, N@20 {pop['ndcg@20']:.4f}.",
        ]
    if p["bet_finetune_recipe"]:
        ft = p["bet_finetune_recipe"]
        lines += [
            "",
            f"BET fine-tuning recipe: Adam lr {ft['learning_rate']:g} x{ft['decay_rate']:g} every "
            f"{ft['decay_steps']} steps (floor {ft['min_learning_rate']:.3g}), batch "
            f"{ft['batch_size']}; retraining recipe: `{json.dumps(p['recipe'], sort_keys=True)}`.",
        ]
    if p["pending"]:
        lines += ["", f"Cells still to run: {', '.join(p['pending'])}."]
    if p["note"]:
        lines += ["", f"Note: {p['note']}"]
    lines.append("")
    return "\n".join(lines)


def read_note(out: str | os.PathLike) -> str:
    """The first paragraph of ``OUT/NOTES.md`` that is not a heading, on one line ("" if none)."""
    notes = Path(out) / "NOTES.md"
    if not notes.exists():
        return ""
    paragraphs = [p for p in notes.read_text().split("\n\n") if not p.startswith("#")]
    return " ".join(paragraphs[0].split()) if paragraphs else ""


def diagnostics_stem(results_dir: str | os.PathLike, dataset: str, backbone: str) -> Path:
    """Path stem of the BET diagnostics of one run (add ``.finetune.json`` ...)."""
    return Path(results_dir) / f"bet_diagnostics_{dataset}_{backbone}"


def main(
    argv: Sequence[str] | None = None,
    *,
    results_dir: str | os.PathLike = "results",
    program: str | None = None,
) -> int:
    """The command line: ``OUT [--name NAME] [--note TEXT] [--diagnostics FILE]``.

    Args:
        argv: the arguments (default ``sys.argv[1:]``).
        results_dir: where ``<name>.{json,md}`` are written (and diagnostics looked up).
        program: how the program is written in the results' ``command`` (default: as typed).
    """
    from tfembsize.protocol.provenance import portable_path, write_results

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", help="output directory of the protocol's command line")
    parser.add_argument("--name", default=None, help="results name (bet_<dataset>_<backbone>)")
    parser.add_argument(
        "--note",
        default="",
        help="text for the report, e.g. why T differs from the paper (default: OUT/NOTES.md's "
        "first paragraph, if the file exists)",
    )
    parser.add_argument(
        "--diagnostics",
        default=None,
        help="bet_diagnostics.py fine-tuning probes of this run (default: "
        "<results>/bet_diagnostics_<dataset>_<backbone>.finetune.json if it exists)",
    )
    args = parser.parse_args(None if argv is None else list(argv))
    path = Path(args.out) / "results.json"
    results = _io.read_json(path, what="protocol results")
    note = args.note or read_note(args.out)
    cfg = results["config"]
    diagnostics_path = Path(
        args.diagnostics
        or diagnostics_stem(results_dir, cfg["name"], cfg["backbone"]).with_suffix(".finetune.json")
    )
    diagnostics = None
    if diagnostics_path.exists():
        diagnostics = _io.read_json(diagnostics_path, what="BET diagnostics")
    elif args.diagnostics:
        parser.error(f"--diagnostics: no such file: {args.diagnostics!r}")
    payload, markdown = build_report(
        results, source=portable_path(path), note=note, diagnostics=diagnostics
    )
    name = args.name or f"bet_{payload['dataset']}_{payload['backbone']}"
    jpath, mpath = write_results(results_dir, name, payload, markdown, program=program)
    out = sys.stdout
    out.write(markdown + "\n")
    out.write(f"Results: {jpath}\n         {mpath}\n")
    return 0
