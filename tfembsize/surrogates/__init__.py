"""Learned fitness predictors used by controllers (they take arrays, not models)."""

from tfembsize.surrogates.deepsets import FEATURES, DeepSetsSurrogate, SortedSizes, UpdateInfo

__all__ = ["DeepSetsSurrogate", "SortedSizes", "UpdateInfo", "FEATURES"]
