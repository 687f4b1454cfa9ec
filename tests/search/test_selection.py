"""Selective retraining: shortlist (ties, duplicates, budgets), one winner rule, resume."""

from __future__ import annotations

import json

import numpy as np
import pytest

from tfembsize.budget import Budget
from tfembsize.errors import BudgetExceededError
from tfembsize.plan import SizePlan
from tfembsize.records import Feedback
from tfembsize.search.selection import (
    Candidate,
    Retraining,
    choose_winner,
    rank_distinct,
    retrain_shortlist,
    search_order,
    selection_value,
    shortlist,
    shortlists,
)

# 3 + 3 rows of width 4: B(0.5) = floor(0.5 * 4 * 6) = 12 usable parameters.
BUDGET = Budget(sparsity=0.5, d_max=4)


def plan(users, items):
    return SizePlan({"user_embedding": users, "item_embedding": items})


def cand(users, items, score, **info):
    return Candidate(plan(users, items), score, info)


CANDIDATES = [
    cand([2, 2, 2], [2, 2, 2], 0.70, name="a"),  # 12: fits
    cand([4, 4, 4], [4, 4, 4], 0.95, name="b"),  # 24: over the budget
    cand([3, 2, 1], [3, 2, 1], 0.80, name="c"),  # 12: fits
    cand([2, 2, 2], [2, 2, 2], 0.75, name="a again"),  # a duplicate of a, scored higher
    cand([1, 1, 1], [1, 1, 1], 0.80, name="d"),  # 6: ties with c, later in the list
    cand([2, 1, 1], [1, 1, 1], 0.60, name="e"),  # 7: fits
]


def test_search_order_and_rank_distinct_break_ties_to_the_earlier_index():
    assert search_order([0.5, 0.9, 0.5, 0.7]) == [1, 3, 0, 2]
    keys = [np.array([1]), np.array([2]), np.array([1]), np.array([3])]
    # 0.9 (key 2), 0.7 (key 3), 0.5 (key 1, index 0); index 2 repeats key 1.
    assert rank_distinct([0.5, 0.9, 0.5, 0.7], keys) == [1, 3, 0]
    with pytest.raises(ValueError, match="same length"):
        rank_distinct([1.0], [])


def test_shortlist_takes_the_top_k_distinct_plans_within_the_budget():
    short = shortlist(CANDIDATES, 3, BUDGET)
    # b (0.95) is over the budget; c and d tie at 0.80 (c first); "a again" (0.75) comes
    # before a (0.70), which is then a duplicate; K = 3 stops there.
    assert [e.candidate.info["name"] for e in short.entries] == ["c", "d", "a again"]
    assert [e.index for e in short.entries] == [2, 4, 3]
    assert [r["index"] for r in short.rejected] == [1]
    assert "more than the budget of 12" in short.rejected[0]["reason"]
    assert not short.missed and not any(e.repaired for e in short.entries)
    for p in short.plans:
        p.check(BUDGET)
    everything = shortlist(CANDIDATES, 10, BUDGET)
    assert [e.candidate.info["name"] for e in everything.entries] == ["c", "d", "a again", "e"]
    assert everything.duplicates == 1  # a
    summary = everything.to_dict()
    assert summary["indices"] == [2, 4, 3, 5] and summary["rejected"][0]["index"] == 1
    assert json.loads(json.dumps(summary)) == summary


def test_over_budget_plans_are_repaired_only_when_asked_and_the_repair_is_recorded():
    short = shortlist(CANDIDATES, 2, BUDGET, repair=True)
    first = short.entries[0]
    assert first.index == 1 and first.repaired  # b, repaired down to the budget
    assert first.candidate.plan.total_params() == 24 and first.plan.total_params() == 12
    first.plan.check(BUDGET)
    # The repair of b (uniform 2s) equals "a again", which is then a duplicate.
    assert np.array_equal(first.plan["user_embedding"], [2, 2, 2])
    assert [e.index for e in short.entries] == [1, 2] and short.to_dict()["repaired"] == [1]
    with pytest.raises(BudgetExceededError):
        CANDIDATES[1].plan.check(BUDGET)  # the candidate itself is left as it was


def test_fill_scales_each_kept_plan_to_spend_the_budget():
    short = shortlist(CANDIDATES, 10, BUDGET, fill=True)
    # ranked as without fill; b is over the budget; filled d equals "a again" (and a), so
    # those are duplicates of the plan already taken
    assert [e.candidate.info["name"] for e in short.entries] == ["c", "d", "e"]
    assert short.duplicates == 2
    assert all(e.filled and not e.repaired for e in short.entries)
    by_name = {e.candidate.info["name"]: e.plan for e in short.entries}
    # d (all 1s, 6 of 12) doubles to all 2s; e ([2,1,1],[1,1,1], 7): factor 1.5 gives
    # [3,1,1],[1,1,1] = 8, and the 4 units left go to the largest rows first, then in order
    assert by_name["d"] == plan([2, 2, 2], [2, 2, 2])
    assert by_name["e"] == plan([4, 2, 2], [2, 1, 1])
    assert by_name["c"] == plan([3, 2, 1], [3, 2, 1])  # spends the budget already
    for p in short.plans:
        p.check(BUDGET)
    assert not shortlist(CANDIDATES, 3, BUDGET).entries[0].filled


def test_a_target_without_a_candidate_within_its_budget_is_missed_not_relaxed(tmp_path):
    tight = Budget(max_params=5, d_max=4)  # every candidate needs >= 6
    short = shortlist(CANDIDATES, 3, tight)
    assert short.missed and short.plans == [] and len(short.rejected) == len(CANDIDATES)
    by_target = shortlists({0.5: CANDIDATES, 0.9: CANDIDATES}, 2, d_max=4)
    # B(0.9) = floor(0.1 * 4 * 6) = 2 < 6 rows: nothing fits, and repair is infeasible too.
    assert not by_target[0.5].missed and by_target[0.9].missed
    assert shortlists({0.9: CANDIDATES}, 2, d_max=4, repair=True)[0.9].missed
    selection = retrain_shortlist(
        short, lambda p: pytest.fail("nothing to retrain"), tmp_path / "r", monitor="recall@20"
    )
    assert selection.missed and selection.winner is None and selection.plan is None


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match="`k` must be a positive integer. Received: k=0"):
        shortlist(CANDIDATES, 0, BUDGET)
    with pytest.raises(TypeError, match="`budget` must be a Budget"):
        shortlist(CANDIDATES, 1, 12)
    with pytest.raises(ValueError, match="`score` must be a finite number. Received: score=nan"):
        cand([1, 1, 1], [1, 1, 1], float("nan"))
    with pytest.raises(TypeError, match=r"`candidates\[0\]` must be a Candidate"):
        shortlist([plan([1, 1, 1], [1, 1, 1])], 1, BUDGET)


def test_one_winner_rule_monitor_value_ties_to_the_better_search_rank():
    assert choose_winner([0.20, 0.25, 0.25]) == 1
    assert choose_winner([0.30, 0.25, 0.30]) == 0
    assert choose_winner([None, float("nan"), 0.1]) == 2
    assert choose_winner([None, float("nan")]) is None and choose_winner([]) is None
    fb = Feedback(quality=0.2, metrics={"recall@20": 0.3})
    assert selection_value(fb, "recall@20") == 0.3 and selection_value(fb, "quality") == 0.2
    with pytest.raises(ValueError, match=r"has no 'ndcg@20'; it has \['recall@20'\]"):
        selection_value(fb, "ndcg@20")


class Model:
    """A stand-in for a Keras model: ``weights`` are variables with numpy/assign/shape."""

    class Var:
        def __init__(self, value, name):
            self.value, self.name = np.array(value, np.float32), name

        @property
        def shape(self):
            return self.value.shape

        def numpy(self):
            return self.value

        def assign(self, value):
            self.value = np.array(value, np.float32)

    def __init__(self, plan, fill=0.0):
        self.plan = plan
        self.weights = [self.Var(np.full((6, 4), fill), "table"), self.Var([fill], "bias")]


class Retrainer:
    """Retrains by formula (validation R@20 per search rank), killable at a given call."""

    def __init__(self, recalls, kill_at=None):
        self.recalls = dict(recalls)
        self.calls = []
        self.kill_at = kill_at

    def __call__(self, p):
        if self.kill_at is not None and len(self.calls) == self.kill_at:
            raise KeyboardInterrupt("killed during a retraining")
        rank = len(self.calls) + self.start
        self.calls.append(p)
        recall = self.recalls[rank]
        return Retraining(
            validation=Feedback(quality=recall / 2, metrics={"recall@20": recall}),
            model=Model(p, fill=recall),
            details={"wall_time": 1.0 + rank, "usable_params": p.total_params()},
        )

    start = 0


def test_retraining_resumes_after_a_crash_without_retraining_finished_candidates(tmp_path):
    short = shortlist(CANDIDATES, 4, BUDGET)  # c, d, "a again", e
    recalls = {0: 0.20, 1: 0.30, 2: 0.30, 3: 0.10}  # d wins; the tie with rank 2 goes to d

    whole = retrain_shortlist(
        short, Retrainer(recalls), tmp_path / "whole", monitor="recall@20", build=Model
    )
    assert whole.winner == 1 and whole.plan == short.plans[1]
    assert [r["selection_value"] for r in whole.records] == [0.20, 0.30, 0.30, 0.10]
    assert whole.records[1]["validation"] == {"recall@20": 0.30, "quality": 0.15}
    assert whole.records[3]["wall_time"] == 4.0 and whole.result.model.weights[1].value == 0.3

    out = tmp_path / "run"
    first = Retrainer(recalls, kill_at=3)
    with pytest.raises(KeyboardInterrupt):
        retrain_shortlist(short, first, out, monitor="recall@20", build=Model)
    assert len(first.calls) == 3
    manifest = json.loads((out / "retraining.json").read_text())
    assert manifest["format"] == "tfembsize.Retraining" and manifest["best"] == 1
    assert [r["rank"] for r in manifest["records"]] == [0, 1, 2]
    weights = sorted(p.name for p in out.glob("*.weights.npz"))
    assert weights == ["r1.weights.npz"]  # only the current winner's are kept

    second = Retrainer(recalls)
    second.start = 3
    resumed = retrain_shortlist(short, second, out, monitor="recall@20", build=Model)
    assert second.calls == [short.plans[3]]  # only the unfinished candidate was retrained
    assert resumed.winner == 1 and resumed.records == whole.records
    # The winner was retrained before the crash: rebuilt from its saved weights and files.
    assert resumed.result.model.plan == short.plans[1]
    assert resumed.result.model.weights[0].value[0, 0] == pytest.approx(0.30)
    assert resumed.result.validation == whole.result.validation
    assert resumed.result.details == {"wall_time": 2.0, "usable_params": 6}

    again = retrain_shortlist(short, Retrainer({}), out, monitor="recall@20", build=Model)
    assert again.winner == 1 and again.records == whole.records  # nothing retrained

    with pytest.raises(ValueError, match="chose by 'recall@20', this run by monitor='ndcg@20'"):
        retrain_shortlist(short, Retrainer({}), out, monitor="ndcg@20", build=Model)
    other = shortlist(list(reversed(CANDIDATES)), 4, Budget(sparsity=0.25, d_max=4))
    with pytest.raises(ValueError, match="holds a retraining of other plans"):
        retrain_shortlist(other, Retrainer({}), out, monitor="recall@20", build=Model)
    with pytest.raises(ValueError, match="more than the 1 shortlisted plans"):
        retrain_shortlist(shortlist(CANDIDATES, 1, BUDGET), Retrainer({}), out, monitor="recall@20")


def test_a_manifest_written_before_this_module_still_resumes(tmp_path):
    """The protocol's BET retrainings (format tfembsize.BETRetraining) have the same layout."""
    short = shortlist(CANDIDATES, 2, BUDGET)
    retrain_shortlist(short, Retrainer({0: 0.2, 1: 0.1}), tmp_path, monitor="recall@20")
    manifest = json.loads((tmp_path / "retraining.json").read_text())
    manifest["format"] = "tfembsize.BETRetraining"
    del manifest["version"], manifest["checksum"]  # an older file has neither
    (tmp_path / "retraining.json").write_text(json.dumps(manifest))
    again = retrain_shortlist(short, Retrainer({}), tmp_path, monitor="recall@20")
    assert again.winner == 0 and again.result.model is None  # no `build`: no weights kept
