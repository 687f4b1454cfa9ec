"""Embedding-size controllers on the ask/tell interface (`Controller`).

A controller decides sizes and never sees the recommender: `ask(observation)` returns a
`Decision` (a budgeted `SizePlan` and the environment mode it needs) and
`tell(decision, feedback)` reports the result. `tfembsize.search.run` drives any of them.
"""

import importlib.util

from tfembsize.controllers.base import MODES, PHASES, Controller, Decision, Problem, fitness_of
from tfembsize.controllers.baselines import ES, MR, FrequencyProportional, StaticController
from tfembsize.controllers.bet import STRATEGIES, Archive, ArchivedAction, BETController
from tfembsize.controllers.bet_sampler import ActionBatch, BudgetedActionSampler

__all__ = [
    "Controller",
    "Decision",
    "Problem",
    "MODES",
    "PHASES",
    "fitness_of",
    "StaticController",
    "ES",
    "MR",
    "FrequencyProportional",
    "BETController",
    "Archive",
    "ArchivedAction",
    "STRATEGIES",
    "BudgetedActionSampler",
    "ActionBatch",
]

if importlib.util.find_spec("tfembsize.controllers.pep") is not None:  # PEP work, when present
    from tfembsize.controllers import pep as _pep
    from tfembsize.controllers.pep import *  # noqa: F403

    __all__ += list(_pep.__all__)
