"""Compressed export: model -> model transform, serving SavedModels, reports, GPU checks.

Example:
    >>> small = tfembsize.export.compress(model)            # searchable -> compressed layers
    >>> tfembsize.export.save_compressed(model, "export/m")  # compress + SavedModel, atomic
    >>> print(tfembsize.export.compression_report("export/m"))
    >>> tfembsize.export.check_gpu_ready("export/m")
"""

from tfembsize.export.compress import (
    CompressionError,
    compress,
    compress_layer,
    is_searchable,
    retrieval_table,
    searchable_layers,
)
from tfembsize.export.gpu import (
    HOST_OPS,
    RAW_ID_HOST_OPS,
    GpuReadiness,
    GpuReadinessError,
    OpIssue,
    SignatureReadiness,
    check_gpu_ready,
    ops_without_gpu_kernel,
)
from tfembsize.export.report import CompressionReport, TableReport, compression_report
from tfembsize.export.saved_model import (
    ExportResult,
    ExportVerificationError,
    read_metadata,
    resolve_jit_compile,
    save_compressed,
    save_serving_model,
)

__all__ = [
    "HOST_OPS",
    "RAW_ID_HOST_OPS",
    "CompressionError",
    "CompressionReport",
    "ExportResult",
    "ExportVerificationError",
    "GpuReadiness",
    "GpuReadinessError",
    "OpIssue",
    "SignatureReadiness",
    "TableReport",
    "check_gpu_ready",
    "compress",
    "compress_layer",
    "compression_report",
    "is_searchable",
    "ops_without_gpu_kernel",
    "read_metadata",
    "resolve_jit_compile",
    "retrieval_table",
    "save_compressed",
    "save_serving_model",
    "searchable_layers",
]
