"""Optimisers for training searchable embedding layers."""

from tfembsize.optimizers.pep_adam import PEPAdam, coupled_l2_gradients

__all__ = ["PEPAdam", "coupled_l2_gradients"]
