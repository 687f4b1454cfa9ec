"""Full-ranking evaluation: Recall@k, NDCG@k and the per-entity quality scores (spec §0, §1).

Example:
    >>> import tfembsize as tes
    >>> split = tes.data.load_dataset("synthetic").split(0.5, 0.25, 0.25, seed=42)
    >>> evaluator = tes.metrics.RankingEvaluator(split, ks=(5, 10, 20))
"""

from tfembsize.metrics.ranking import DEFAULT_KS, RankingEvaluator, RankingResult

__all__ = ["DEFAULT_KS", "RankingEvaluator", "RankingResult"]
