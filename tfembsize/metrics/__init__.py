"""Full-ranking evaluation: Recall@k, NDCG@k and the per-entity quality scores.

The protocol of the CIESS (Qu et al., SIGIR 2023) and BET (Qu et al., WSDM 2024) papers: every
user is ranked against all items, known positives excluded.

Example:
    >>> import tfembsize as tes
    >>> split = tes.data.load_dataset("synthetic").split(0.5, 0.25, 0.25, seed=42)
    >>> evaluator = tes.metrics.RankingEvaluator(split, ks=(5, 10, 20))
"""

from tfembsize.metrics.ranking import DEFAULT_KS, RankingEvaluator, RankingResult

__all__ = ["DEFAULT_KS", "RankingEvaluator", "RankingResult"]
