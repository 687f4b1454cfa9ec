"""Integrations with other libraries.

* `tfembsize.integrations.tfrs`: a TensorFlow Recommenders two-tower retrieval model over
  tfembsize tables and a BruteForce index (legacy Keras only: ``TF_USE_LEGACY_KERAS=1``).
* `tfembsize.integrations.keras_tuner`: `SizeSearchTuner`, keras-tuner's oracles tuning a
  size search's knobs (one whole search per trial; both Keras modes).

Submodules are imported on demand, so ``import tfembsize.integrations`` works under Keras 3.
"""
