"""Searchable and compressed embedding layers (drop-ins for ``keras.layers.Embedding``)."""

from tfembsize.layers.budgeted_embedding import BudgetedEmbedding
from tfembsize.layers.compressed_embedding import CompressedEmbedding
from tfembsize.layers.compressed_ladder import CompressedLadderEmbedding
from tfembsize.layers.ladder_embedding import LadderEmbedding
from tfembsize.layers.masked_embedding import MaskedEmbedding
from tfembsize.layers.pep_embedding import PEPEmbedding, find_pep_layers
from tfembsize.layers.utils import (
    check_ids_in_range,
    find_searchable_layers,
    ids_out_of_range_message,
)

__all__ = [
    "MaskedEmbedding",
    "BudgetedEmbedding",
    "PEPEmbedding",
    "CompressedEmbedding",
    "CompressedLadderEmbedding",
    "LadderEmbedding",
    "find_searchable_layers",
    "find_pep_layers",
    "check_ids_in_range",
    "ids_out_of_range_message",
]
