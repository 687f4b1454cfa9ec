"""ESAPN: per-entity sizes grown up a ladder by REINFORCE policies while the data streams in.

Every user and item sits on a rung of a ladder of candidate sizes (``(2, 4, 8, 16, 64, 128)``
by default), stored by a `tfembsize.layers.LadderEmbedding` table and lifted to the full width
by learned maps. Two policies (users, items) look at an entity's running interaction count
and its rung and decide, batch by batch, whether it moves up one rung; a policy's reward is
how much lower a row's loss is with its size raised than the row's recent average. Sizes
only grow, and ESAPN has no budget: a run reports the sparsity it reaches (an optional
``budget_cap``, not part of ESAPN, refuses growth past a budget).

The pieces:

* `ESAPNConfig`: the recipe (ladder, loss memory, policies, optional cap, the stream);
* `esapn_model`: a backbone with its user and item tables turned into ladders;
* `ESAPNController`: the in-training controller, the hook of `tfembsize.training.train_bpr`
  (all its per-batch work runs inside the compiled step, with XLA too);
* `run_esapn`: one pass (or several) over the training interactions with the controller,
  checkpointed and resumable (what the paper protocol calls);
* `run_esapn_stream`: the paper's own setting, a time-ordered rating stream classified
  test-then-train by a `tfembsize.models.RatingClassifier` (ESAPN or the fixed-size
  baseline), checkpointed and resumable.

References:
    Liu et al., "Automated Embedding Size Search in Deep Recommender Systems", SIGIR 2020
    (ESAPN).
"""

from tfembsize.controllers.esapn.config import ESAPNConfig, default_ladder, esapn_model
from tfembsize.controllers.esapn.controller import ESAPNController
from tfembsize.controllers.esapn.run import ESAPNRun, run_esapn
from tfembsize.controllers.esapn.stream import ESAPNStreamRun, run_esapn_stream, stream_config

__all__ = [
    "ESAPNConfig",
    "ESAPNController",
    "ESAPNRun",
    "ESAPNStreamRun",
    "default_ladder",
    "esapn_model",
    "run_esapn",
    "run_esapn_stream",
    "stream_config",
]
