"""The shared vocabulary of controllers, environments and the search loop.

This module sits below both `tfembsize.controllers` and `tfembsize.search` (it imports
neither), so every part of the package speaks the same typed records:

* `Decision`: what a controller asks the environment to do (a plan, a mode, a budget).
* `StepRecord`: one completed step of a search (decision, plan, feedback).
* `Problem`: the fixed facts a controller keeps from the first observation.
* `MODES`, `PHASES`, `STATUSES`, `SIDES` and the one fitness rule, `fitness_of` (with
  `step_score`, the same number with failed steps ranked last).

Two records carry everything a controller ever sees of the recommender:

* `Observation`: the fixed facts of the problem (which tables belong to users and items, the
  training frequencies, the full width ``d_max``), the plan currently applied, the feedback
  of the last step, and the feedback of the full-size reference model.
* `Feedback`: what one environment step returned: per-entity quality for users and items,
  the aggregate quality, ratios against the full-size model, usable parameters, wall time,
  and a status (``"ok"`` or ``"failed"`` with a message).

Both are frozen dataclasses whose numpy arrays are read-only copies. Both round-trip through
JSON (`to_dict` / `from_dict`, arrays as lists) and through files (`save` / `load`, ``.json``
with arrays inline, or ``.npz`` with the scalars as a JSON string beside the arrays, never
pickle).
"""

from tfembsize.records._common import MODES, PHASES, SIDES, STATUSES, json_clean
from tfembsize.records.decision import Decision, StepRecord, fitness_of, step_score
from tfembsize.records.feedback import Feedback
from tfembsize.records.observation import Observation, Problem

__all__ = [
    "Decision",
    "Feedback",
    "Observation",
    "Problem",
    "StepRecord",
    "MODES",
    "PHASES",
    "STATUSES",
    "SIDES",
    "fitness_of",
    "json_clean",
    "step_score",
]
