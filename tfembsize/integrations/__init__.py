"""Integrations with other libraries.

* `tfembsize.integrations.tfrs`: a TensorFlow Recommenders two-tower retrieval model over
  tfembsize tables and a BruteForce index (legacy Keras only: ``TF_USE_LEGACY_KERAS=1``).

Submodules are imported on demand, so ``import tfembsize.integrations`` works under Keras 3.
"""
