"""Embedding-size controllers on the ask/tell interface (`Controller`).

A controller decides sizes and never sees the recommender: `ask(observation)` returns a
`Decision` (a budgeted `SizePlan` and the environment mode it needs) and
`tell(decision, feedback)` reports the result. `tfembsize.search.run` drives any of them.

Controllers that act while the model trains (PEP, ESAPN) implement `InTrainingController`
instead: a per-batch hook of `tfembsize.training.train_bpr`, or a ``model.fit`` callback.
"""

from tfembsize.controllers.base import MODES, PHASES, Controller, Decision, Problem, fitness_of
from tfembsize.controllers.baselines import ES, MR, FrequencyProportional, StaticController
from tfembsize.controllers.bet import STRATEGIES, Archive, ArchivedAction, BETController
from tfembsize.controllers.bet_sampler import ActionBatch, BudgetedActionSampler
from tfembsize.controllers.ciess import NOISE_PLACEMENTS, CIESSArchive, CIESSController
from tfembsize.controllers.esapn import (
    ESAPNConfig,
    ESAPNController,
    ESAPNRun,
    ESAPNStreamRun,
    default_ladder,
    esapn_model,
    run_esapn,
    run_esapn_stream,
)
from tfembsize.controllers.hooks import InTrainingController
from tfembsize.controllers.pep import (
    PEPCapture,
    PEPConfig,
    PEPController,
    PEPPruneResult,
    PEPResult,
    pep_model,
    prune,
    retrain_ticket,
    run_pep,
    ticket_model,
)

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
    "CIESSController",
    "CIESSArchive",
    "NOISE_PLACEMENTS",
    "InTrainingController",
    "ESAPNConfig",
    "ESAPNController",
    "ESAPNRun",
    "ESAPNStreamRun",
    "default_ladder",
    "esapn_model",
    "run_esapn",
    "run_esapn_stream",
    "PEPConfig",
    "PEPCapture",
    "PEPPruneResult",
    "PEPResult",
    "PEPController",
    "pep_model",
    "prune",
    "ticket_model",
    "retrain_ticket",
    "run_pep",
]
