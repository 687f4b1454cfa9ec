"""Searchable and compressed embedding layers."""

from tfembsize.layers.budgeted_embedding import BudgetedEmbedding
from tfembsize.layers.masked_embedding import MaskedEmbedding
from tfembsize.layers.utils import find_searchable_layers

__all__ = ["MaskedEmbedding", "BudgetedEmbedding", "find_searchable_layers"]
