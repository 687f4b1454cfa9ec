"""compression_report: what compressed tables really cost, index included."""

from __future__ import annotations

import dataclasses
import gzip
import os
from pathlib import Path
from typing import Any

import numpy as np
import tensorflow as tf

from tfembsize.export.compress import CompressionError, retrieval_table, searchable_layers
from tfembsize.layers.compressed_embedding import (
    CompressedEmbedding,
    PackedTable,
    pack_layer,
)
from tfembsize.layers.compressed_ladder import pack_ladder
from tfembsize.layers.utils import iter_layers

__all__ = ["TableReport", "CompressionReport", "compression_report"]

_ARRAY_ORDER = ("values", "row_to_slot", "slot_to_row", "columns", "bitmask")


@dataclasses.dataclass(frozen=True)
class TableReport:
    """Storage cost of one compressed table.

    Attributes:
        name: layer name.
        rows: rows of the table.
        width: lookup width (``d_max``).
        kind: ``"prefix"`` or ``"sparse"``.
        classes: number of size classes.
        usable_params: parameters the searchable layer may use (its budgeted count).
        stored_values: values stored (usable parameters plus any class padding).
        value_bytes: bytes of the stored values.
        index_bytes: bytes of the maps, column indices and bitmasks that locate them.
        raw_bytes: ``value_bytes + index_bytes``.
        gzip_bytes: the stored arrays gzip-compressed (level 6), for comparison with tools
            that report compressed checkpoint sizes.
        dense_bytes: the dense ``rows x width`` table at the same dtype.
    """

    name: str
    rows: int
    width: int
    kind: str
    classes: int
    usable_params: int
    stored_values: int
    value_bytes: int
    index_bytes: int
    raw_bytes: int
    gzip_bytes: int
    dense_bytes: int

    @property
    def ratio(self) -> float:
        """``raw_bytes / dense_bytes`` (1.0 = no saving)."""
        return self.raw_bytes / self.dense_bytes if self.dense_bytes else float("nan")

    @property
    def bytes_per_usable_param(self) -> float:
        """``raw_bytes / (usable_params * 4)``: 1.0 means no overhead beyond the values."""
        return self.raw_bytes / (4 * self.usable_params) if self.usable_params else float("inf")

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict, derived ratios included."""
        out = dataclasses.asdict(self)
        out["ratio"] = self.ratio
        out["bytes_per_usable_param"] = self.bytes_per_usable_param
        return out


@dataclasses.dataclass(frozen=True)
class CompressionReport:
    """Per-table storage costs plus totals (and file sizes for an export directory).

    The table totals count what the compressed tables store; an export directory also
    holds the serving graph, the other variables the signatures read (towers' dense
    layers, id maps), vocabulary files and metadata, so for an export ``total_bytes``
    is what the directory really takes on disk.

    Attributes:
        tables: one `TableReport` per compressed table.
        source: ``"model"`` or the export path.
        variables_bytes: bytes of the SavedModel's ``variables/`` directory (exports only).
        graph_bytes: bytes of ``saved_model.pb``, the serving graph (exports only).
        assets_bytes: bytes of ``assets/`` (vocabulary files of raw-id exports; exports
            only).
        total_bytes: bytes of every file of the export directory: the graph, the variables,
            the assets and the metadata (exports only).
    """

    tables: tuple[TableReport, ...]
    source: str
    variables_bytes: int | None = None
    graph_bytes: int | None = None
    assets_bytes: int | None = None
    total_bytes: int | None = None

    def _sum(self, field: str) -> int:
        return int(sum(getattr(t, field) for t in self.tables))

    @property
    def usable_params(self) -> int:
        """Usable parameters over all tables."""
        return self._sum("usable_params")

    @property
    def value_bytes(self) -> int:
        """Stored value bytes over all tables."""
        return self._sum("value_bytes")

    @property
    def index_bytes(self) -> int:
        """Index bytes over all tables."""
        return self._sum("index_bytes")

    @property
    def raw_bytes(self) -> int:
        """Stored bytes (values + index) over all tables."""
        return self._sum("raw_bytes")

    @property
    def gzip_bytes(self) -> int:
        """Gzip bytes over all tables."""
        return self._sum("gzip_bytes")

    @property
    def dense_bytes(self) -> int:
        """Bytes of the dense tables."""
        return self._sum("dense_bytes")

    @property
    def ratio(self) -> float:
        """Stored bytes over dense bytes, all tables."""
        return self.raw_bytes / self.dense_bytes if self.dense_bytes else float("nan")

    @property
    def bytes_per_usable_param(self) -> float:
        """Stored bytes over ``4 x usable params``, all tables."""
        return self.raw_bytes / (4 * self.usable_params) if self.usable_params else float("inf")

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict with the per-table entries and the totals."""
        return {
            "source": self.source,
            "tables": [t.to_dict() for t in self.tables],
            "total": {
                "usable_params": self.usable_params,
                "value_bytes": self.value_bytes,
                "index_bytes": self.index_bytes,
                "raw_bytes": self.raw_bytes,
                "gzip_bytes": self.gzip_bytes,
                "dense_bytes": self.dense_bytes,
                "ratio": self.ratio,
                "bytes_per_usable_param": self.bytes_per_usable_param,
            },
            "variables_bytes": self.variables_bytes,
            "graph_bytes": self.graph_bytes,
            "assets_bytes": self.assets_bytes,
            "total_bytes": self.total_bytes,
        }

    def to_markdown(self) -> str:
        """A markdown table (one row per table plus the total)."""
        head = (
            "| table | rows | width | kind | classes | usable params | value bytes | "
            "index bytes | raw bytes | gzip bytes | dense bytes | ratio | bytes/(4·usable) |\n"
            "|---|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n"
        )
        rows = [
            f"| {t.name} | {t.rows} | {t.width} | {t.kind} | {t.classes} | {t.usable_params} | "
            f"{t.value_bytes} | {t.index_bytes} | {t.raw_bytes} | {t.gzip_bytes} | "
            f"{t.dense_bytes} | {t.ratio:.4f} | {t.bytes_per_usable_param:.4f} |"
            for t in self.tables
        ]
        rows.append(
            f"| **total** | {sum(t.rows for t in self.tables)} | | | | {self.usable_params} | "
            f"{self.value_bytes} | {self.index_bytes} | {self.raw_bytes} | {self.gzip_bytes} | "
            f"{self.dense_bytes} | {self.ratio:.4f} | {self.bytes_per_usable_param:.4f} |"
        )
        tail = ""
        if self.total_bytes is not None:
            other = (
                self.total_bytes
                - (self.graph_bytes or 0)
                - (self.variables_bytes or 0)
                - (self.assets_bytes or 0)
            )
            tail = (
                f"\n\nOn disk: {self.total_bytes} bytes in all = saved_model.pb (graph) "
                f"{self.graph_bytes} + variables/ {self.variables_bytes} + assets/ "
                f"{self.assets_bytes} + metadata {other}."
            )
        return head + "\n".join(rows) + tail

    def __str__(self) -> str:
        return self.to_markdown()


def _table_report(name: str, packed: PackedTable) -> TableReport:
    arrays = packed.arrays()
    raw = b"".join(np.ascontiguousarray(arrays[k]).tobytes() for k in _ARRAY_ORDER)
    value_bytes, index_bytes = packed.value_bytes(), packed.index_bytes()
    return TableReport(
        name=name,
        rows=packed.input_dim,
        width=packed.output_dim,
        kind=packed.kind,
        classes=len(packed.class_widths),
        usable_params=packed.usable_params,
        stored_values=int(packed.values.size),
        value_bytes=value_bytes,
        index_bytes=index_bytes,
        raw_bytes=value_bytes + index_bytes,
        gzip_bytes=len(gzip.compress(raw, compresslevel=6, mtime=0)),
        dense_bytes=packed.input_dim * packed.output_dim * packed.values.dtype.itemsize,
    )


def compression_report(
    model_or_path: Any, *, max_classes: int | None = None, positions: str = "columns"
) -> CompressionReport:
    """Per-table rows, usable params, stored value and index bytes, gzip bytes and ratios.

    Args:
        model_or_path: a compressed model, a model with searchable layers (reported as
            `tfembsize.export.compress` would store it) or the directory of an export
            written by `save_compressed` (arrays read from its checkpoint; file sizes
            added).
        max_classes: for searchable layers, as in `compress`.
        positions: for searchable layers, as in `compress`.

    Returns:
        A `CompressionReport`; ``str(report)`` is a markdown table.

    Raises:
        CompressionError: the model holds no compressed or searchable tables.
        FileNotFoundError: the path is not a tfembsize export.

    Example:
        >>> print(compression_report("export/gowalla-bet-90"))
    """
    if isinstance(model_or_path, (str, os.PathLike)):
        return _report_path(Path(model_or_path))
    model = model_or_path
    tables: list[TableReport] = []
    for layer in [model, *iter_layers(model)]:
        if isinstance(layer, CompressedEmbedding):
            tables.append(_table_report(layer.name, layer.packed()))
    found = searchable_layers(model)
    if found:
        scoring = retrieval_table(model, found)
        for name, layer in found.items():
            if getattr(layer, "_tfembsize_ladder", False):  # stored as compress() stores it
                tables.append(_table_report(f"{name}_rows", pack_ladder(layer)))
                continue
            packed = pack_layer(
                layer, scoring=name == scoring, max_classes=max_classes, positions=positions
            )
            tables.append(_table_report(name, packed))
    if not tables:
        raise CompressionError(
            f"{type(model).__name__} '{getattr(model, 'name', '')}' holds no compressed or "
            "searchable embedding tables to report on."
        )
    return CompressionReport(tables=tuple(tables), source="model")


def _report_path(path: Path) -> CompressionReport:
    from tfembsize.export.saved_model import read_metadata

    meta = read_metadata(path)
    reader = tf.train.load_checkpoint(str(path / "variables" / "variables"))
    tables = []
    for entry in meta["tables"]:
        cfg = entry["config"]
        keys = entry["checkpoint_keys"]
        arrays = {name: np.asarray(reader.get_tensor(key)) for name, key in keys.items()}
        empty = np.zeros(0, np.int32)
        packed = PackedTable(
            input_dim=cfg["input_dim"],
            output_dim=cfg["output_dim"],
            kind=cfg["kind"],
            class_widths=tuple(cfg["class_widths"]),
            class_counts=tuple(cfg["class_counts"]),
            colist_classes=cfg["colist_classes"],
            index_bits=cfg["index_bits"],
            column_bits=cfg["column_bits"],
            usable_params=cfg["usable_params"],
            values=arrays["values"],
            row_to_slot=arrays["row_to_slot"],
            slot_to_row=arrays.get("slot_to_row", empty),
            columns=arrays.get("columns", empty),
            bitmask=arrays.get("bitmask", empty),
        )
        tables.append(_table_report(entry["name"], packed))
    graph = path / "saved_model.pb"
    return CompressionReport(
        tables=tuple(tables),
        source=str(path),
        variables_bytes=_dir_bytes(path / "variables"),
        graph_bytes=int(graph.stat().st_size) if graph.is_file() else None,
        assets_bytes=_dir_bytes(path / "assets"),
        total_bytes=_dir_bytes(path),
    )


def _dir_bytes(path: Path) -> int:
    """Bytes of every file under ``path`` (0 when it does not exist)."""
    if not path.is_dir():
        return 0
    return int(sum(f.stat().st_size for f in path.rglob("*") if f.is_file()))
