"""PEP's prune-then-retrain recipe: mask capture at several budgets, lottery-ticket retraining.

PEP trains a model whose tables are `PEPEmbedding` layers with `PEPAdam` (coupled L2 on the
thresholds, so they rise by about the learning rate per step and the tables prune
themselves). After every step the usable (non-zero) count ``P`` over all the PEP tables is
compared with the budgets ``B(c) = floor((1 - c) d_max N)`` of the target sparsities; the
first time ``P <= B(c)`` the binary mask ``M_c`` is captured. Each mask is then retrained as
a lottery ticket: the tables restart from their initial values ``E0 * M_c`` with the
threshold off, the other weights from the same seed's initialisation, and training stops
early on **validation** (never test).

The pieces:

* `PEPController`: the capture bookkeeping (targets, budgets, masks saved as ``.npz`` as
  they are captured, missed targets, JSON state). It is an in-training controller: the
  hook of `tfembsize.training.train_bpr` (the count runs inside the compiled step) or a
  Keras callback for ``model.fit`` (`PEPController.callback`, in the shape of tfmot's
  ``UpdatePruningStep``);
* `prune`: the pruning phase for a `tfembsize.models` backbone: `train_bpr` with the
  controller as hook, checkpointed and resumable;
* `ticket_model`, `retrain_ticket`: the lottery ticket and its retraining with `train_bpr`;
* `run_pep`: everything for a list of sparsities (what the paper protocol calls);
* `mask_overlap`, `prefix_masks`: how many kept coordinates a user and an item share (what
  a dot-product score uses), and the per-row prefix masks of the same counts
  (``PEPConfig(ticket="prefix")``).

References:
    Liu et al., "Learnable Embedding Sizes for Recommender Systems", ICLR 2021.
"""

from tfembsize.controllers.pep.config import PEPConfig
from tfembsize.controllers.pep.controller import PEPController
from tfembsize.controllers.pep.overlap import MaskOverlap, mask_overlap, prefix_masks
from tfembsize.controllers.pep.pruning import prune, run_pep
from tfembsize.controllers.pep.results import PEPCapture, PEPPruneResult, PEPResult
from tfembsize.controllers.pep.tickets import pep_model, retrain_ticket, ticket_model

__all__ = [
    "PEPConfig",
    "PEPCapture",
    "PEPPruneResult",
    "PEPResult",
    "PEPController",
    "MaskOverlap",
    "mask_overlap",
    "prefix_masks",
    "pep_model",
    "prune",
    "ticket_model",
    "retrain_ticket",
    "run_pep",
]
