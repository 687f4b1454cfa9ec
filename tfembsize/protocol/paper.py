"""Published numbers (R@20 / N@20) of the CIESS and BET papers, for tables beside ours.

Values are copied by hand from the papers' result tables. ML-1M cells come from the
CIESS paper (SIGIR'23, Table 1 and its uniform/random rows); Gowalla cells from the BET
paper (WSDM'24, Table 1 and its baseline rows). Neither paper has an MF backbone (MF is
LightGCN with 0 layers in this library) nor a full-size (d = 128) row; `paper_cell` says so
instead of inventing a number.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["PaperCell", "paper_cell", "PAPER_SOURCES", "PAPER_METHOD_LABELS"]

PAPER_SOURCES = {
    "ml-1m": "CIESS paper (Qu et al., SIGIR 2023), Table 1",
    "gowalla": "BET paper (Qu et al., WSDM 2024), Table 1",
}

PAPER_METHOD_LABELS = {
    "es": "uniform (SU/ES)",
    "mr": "random (SR/MR)",
    "ciess": "CIESS",
    "bet": "BET",
    "pep": "PEP",
    "esapn": "ESAPN",
    "optemb": "OptEmb",
}

_BACKBONES = ("lightgcn", "ngcf", "ncf")

# (dataset, method, sparsity) -> (LightGCN, NGCF, NCF) as (R@20, N@20).
_TABLE: dict[tuple[str, str, float], tuple[tuple[float, float], ...]] = {
    # CIESS paper (Qu et al., SIGIR 2023), ML-1M.
    ("ml-1m", "ciess", 0.8): ((0.2436, 0.4257), (0.2148, 0.3854), (0.2221, 0.3828)),
    ("ml-1m", "pep", 0.8): ((0.2098, 0.3778), (0.2138, 0.3798), (0.2045, 0.3603)),
    ("ml-1m", "es", 0.8): ((0.2248, 0.3969), (0.2232, 0.3858), (0.2080, 0.3682)),
    ("ml-1m", "mr", 0.8): ((0.2004, 0.3648), (0.2053, 0.3693), (0.1914, 0.3374)),
    ("ml-1m", "ciess", 0.9): ((0.2248, 0.4023), (0.2082, 0.3779), (0.2131, 0.3750)),
    ("ml-1m", "pep", 0.9): ((0.1988, 0.3641), (0.2092, 0.3727), (0.2033, 0.3591)),
    ("ml-1m", "es", 0.9): ((0.2105, 0.3787), (0.2069, 0.3679), (0.1973, 0.3546)),
    ("ml-1m", "mr", 0.9): ((0.1802, 0.3383), (0.2056, 0.3660), (0.1703, 0.3127)),
    ("ml-1m", "ciess", 0.95): ((0.2009, 0.3664), (0.2055, 0.3727), (0.1982, 0.3587)),
    ("ml-1m", "pep", 0.95): ((0.1789, 0.3315), (0.2020, 0.3618), (0.1955, 0.3379)),
    ("ml-1m", "es", 0.95): ((0.1752, 0.3272), (0.1977, 0.3595), (0.1841, 0.3358)),
    ("ml-1m", "mr", 0.95): ((0.1634, 0.3119), (0.1958, 0.3593), (0.1637, 0.3072)),
    # BET paper (Qu et al., WSDM 2024), Gowalla.
    ("gowalla", "bet", 0.8): ((0.1753, 0.1483), (0.1454, 0.1204), (0.1294, 0.0973)),
    ("gowalla", "ciess", 0.8): ((0.1750, 0.1461), (0.1504, 0.1251), (0.1307, 0.0997)),
    ("gowalla", "pep", 0.8): ((0.1588, 0.1347), (0.1524, 0.1245), (0.1282, 0.0957)),
    ("gowalla", "es", 0.8): ((0.1674, 0.1400), (0.1466, 0.1170), (0.1235, 0.0916)),
    ("gowalla", "mr", 0.8): ((0.1583, 0.1323), (0.1223, 0.0982), (0.1243, 0.0910)),
    ("gowalla", "bet", 0.9): ((0.1620, 0.1376), (0.1426, 0.1177), (0.1122, 0.0845)),
    ("gowalla", "ciess", 0.9): ((0.1589, 0.1353), (0.1380, 0.1140), (0.1131, 0.0841)),
    ("gowalla", "pep", 0.9): ((0.1274, 0.1102), (0.1327, 0.1081), (0.1121, 0.0839)),
    ("gowalla", "es", 0.9): ((0.1477, 0.1217), (0.1380, 0.1115), (0.1112, 0.0796)),
    ("gowalla", "mr", 0.9): ((0.1403, 0.1171), (0.1123, 0.0911), (0.1069, 0.0769)),
    ("gowalla", "bet", 0.95): ((0.1374, 0.1171), (0.1172, 0.0998), (0.0963, 0.0756)),
    ("gowalla", "ciess", 0.95): ((0.1214, 0.0997), (0.1129, 0.0964), (0.0933, 0.0717)),
    ("gowalla", "pep", 0.95): ((0.0803, 0.0712), (0.0674, 0.0554), (0.0897, 0.0712)),
    ("gowalla", "es", 0.95): ((0.1085, 0.0872), (0.1213, 0.1007), (0.0952, 0.0682)),
    ("gowalla", "mr", 0.95): ((0.1178, 0.0975), (0.1040, 0.0859), (0.0918, 0.0674)),
}

# Unbudgeted methods: (dataset, method) -> per backbone (sparsity reached, R@20, N@20).
_UNBUDGETED: dict[tuple[str, str], tuple[tuple[float, float, float], ...]] = {
    ("ml-1m", "esapn"): ((0.72, 0.2422, 0.4178), (0.85, 0.2276, 0.3829), (0.72, 0.2283, 0.3822)),
    ("gowalla", "esapn"): ((0.75, 0.1579, 0.1329), (0.83, 0.1396, 0.1193), (0.74, 0.1280, 0.0959)),
    ("gowalla", "optemb"): (
        (0.74, 0.1314, 0.1115),
        (0.75, 0.1227, 0.1005),
        (0.82, 0.0877, 0.0653),
    ),
}


@dataclass(frozen=True)
class PaperCell:
    """A published number for one cell, or the reason there is none.

    Attributes:
        recall20: R@20 (None when the paper has no cell).
        ndcg20: N@20 (None when the paper has no cell).
        backbone: the backbone column the number comes from (may differ from ours: MF rows
            show the LightGCN column, since MF is LightGCN with 0 layers).
        source: the paper and table.
        note: why there is no cell, or what to keep in mind (e.g. the sparsity an
            unbudgeted method reached).
    """

    recall20: float | None
    ndcg20: float | None
    backbone: str | None
    source: str | None
    note: str = ""

    @property
    def available(self) -> bool:
        """True when the paper has a number."""
        return self.recall20 is not None

    def text(self) -> str:
        """Markdown cell text, e.g. ``.2248 / .3969 (LightGCN)``."""
        if not self.available:
            return f"— ({self.note})" if self.note else "—"
        num = f"{self.recall20:.4f} / {self.ndcg20:.4f}".replace("0.", ".")
        extra = []
        if self.backbone:
            extra.append(_pretty(self.backbone))
        if self.note:
            extra.append(self.note)
        return f"{num} ({'; '.join(extra)})" if extra else num


def _pretty(backbone: str) -> str:
    return {"lightgcn": "LightGCN", "ngcf": "NGCF", "ncf": "NCF", "mf": "MF"}.get(
        backbone, backbone
    )


def paper_cell(dataset: str, backbone: str, method: str, sparsity: float | None) -> PaperCell:
    """The published R@20 / N@20 for a (dataset, backbone, method, sparsity) cell.

    Args:
        dataset: ``"ml-1m"`` (CIESS paper) or ``"gowalla"`` (BET paper); others have none.
        backbone: ``"lightgcn"``, ``"ngcf"``, ``"ncf"`` or ``"mf"`` (reported against the
            LightGCN column, with a note).
        method: our method name (``"es"``, ``"mr"``, ``"bet"``, ``"ciess"``, ``"pep"``,
            ``"esapn"``, ...).
        sparsity: target sparsity (None for full-size or unbudgeted rows).

    Returns:
        A `PaperCell`; ``available`` is False with a ``note`` when the paper has no cell.

    Example:
        >>> paper_cell("ml-1m", "lightgcn", "es", 0.9).text()
        '.2105 / .3787 (LightGCN)'
        >>> paper_cell("gowalla", "mf", "full", None).text()
        '— (paper has no full-size (d=128) row)'
    """
    dataset = dataset.lower()
    method = method.lower()
    backbone = backbone.lower()
    source = PAPER_SOURCES.get(dataset)
    if source is None:
        return PaperCell(None, None, None, None, f"no paper reports {dataset}")
    column = backbone
    note = ""
    if backbone == "mf":
        column = "lightgcn"
        note = "paper has no MF column"
    if column not in _BACKBONES:
        return PaperCell(None, None, None, source, f"paper has no {backbone} column")
    idx = _BACKBONES.index(column)
    if (dataset, method) in _UNBUDGETED:
        reached, r, n = _UNBUDGETED[(dataset, method)][idx]
        extra = f"reached sparsity {reached:.0%}"
        return PaperCell(r, n, column, source, f"{note}; {extra}" if note else extra)
    if sparsity is None:
        what = "full-size (d=128)" if method == "full" else f"{method} without a sparsity"
        return PaperCell(None, None, None, source, f"paper has no {what} row")
    key = (dataset, method, round(float(sparsity), 6))
    if key not in _TABLE:
        return PaperCell(
            None, None, None, source, f"paper has no {method} cell at {float(sparsity):.0%}"
        )
    r, n = _TABLE[key][idx]
    return PaperCell(r, n, column, source, note)
