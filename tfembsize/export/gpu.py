"""check_gpu_ready: is a serving SavedModel runnable on a GPU server (checked on any machine)?

Two checks, per signature:

1. **Kernels.** Every op reachable from the signature's outputs, including the bodies of
   every function it calls (``PartitionedCall``, ``If``, ``While``... recursively through the
   SavedModel's function library), must have a kernel registered for ``GPU`` (or for
   ``DEFAULT``, the device-agnostic registration TensorFlow uses for ops such as
   ``ReadVariableOp`` or ``Assert``) whose type constraints accept the node's dtypes, as
   reported by ``tensorflow.python.framework.kernels.get_registered_kernels_for_op``. Ops
   with CPU kernels only (``RaggedGather``, ``UniqueV2``, string ops...) make the graph bounce
   to the host or fail placement. `HOST_OPS` lists the ops accepted without a GPU kernel
   because they are graph plumbing or checkpoint I/O that always runs on the host.
   Signatures that take or return string ids (exports with raw ids from a ``StringLookup``)
   also accept `RAW_ID_HOST_OPS`, the vocabulary-table lookups that map strings to rows
   and back on the host; every op between them needs a GPU kernel as above.
2. **XLA.** The signature, wrapped in ``tf.function(jit_compile=True)``, compiles and gives
   the same outputs as the plain call on valid example inputs. XLA has no string type, so
   signatures with string ids are not compiled whole (reported as not applicable); their
   row computation is one function compiled with XLA when the export uses
   ``jit_compile=True``.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import tensorflow as tf
from tensorflow.core.protobuf import saved_model_pb2
from tensorflow.python.framework import kernels

__all__ = [
    "HOST_OPS",
    "RAW_ID_HOST_OPS",
    "GpuReadiness",
    "GpuReadinessError",
    "OpIssue",
    "SignatureReadiness",
    "check_gpu_ready",
    "ops_without_gpu_kernel",
]

logger = logging.getLogger(__name__)

#: Ops accepted without a GPU/DEFAULT kernel: graph plumbing and checkpoint I/O that the
#: runtime executes on the host by design (never in the per-request compute path).
HOST_OPS = frozenset(
    {
        "_Arg",
        "_Retval",
        "NoOp",
        "Placeholder",
        "PlaceholderWithDefault",
        "Const",
        "Identity",
        "IdentityN",
        "PartitionedCall",
        "StatefulPartitionedCall",
        "VarHandleOp",
        "ReadVariableOp",
        "Assert",
        "SaveV2",
        "RestoreV2",
        "MergeV2Checkpoints",
        "ShardedFilename",
        "StringJoin",
        "StaticRegexFullMatch",
        "DisableCopyOnRead",
    }
)

#: Ops that map raw string ids to table rows and back through the vocabulary tables of an
#: export with raw ids. Strings cannot live on a GPU, so TensorFlow places these on the host;
#: they run before and after the device computation, which takes and returns int32 rows.
#: Accepted (and reported among the host ops) only in signatures with string ids.
RAW_ID_HOST_OPS = frozenset({"LookupTableFindV2", "LookupTableSizeV2", "HashTableV2"})

_GPU_DEVICES = ("GPU", "DEFAULT")


class GpuReadinessError(RuntimeError):
    """A serving SavedModel is not GPU-ready (raised by `check_gpu_ready` in strict mode)."""


@dataclasses.dataclass(frozen=True)
class OpIssue:
    """An op of the serving graph without a usable GPU kernel.

    Attributes:
        op: op type.
        dtypes: the node's type attributes (``attr=dtype``) that no GPU kernel accepts.
        count: nodes of this op type and dtypes.
    """

    op: str
    dtypes: tuple[str, ...]
    count: int


@dataclasses.dataclass(frozen=True)
class SignatureReadiness:
    """Result of both checks for one signature.

    Attributes:
        name: signature name.
        ops: op types reachable from the signature (sorted).
        host_ops: reachable ops accepted through `HOST_OPS` only.
        missing: ops without a GPU kernel (and not in `HOST_OPS`).
        jit_compiled: whether the XLA check ran and compiled.
        jit_error: the compilation or comparison error, if any.
        max_abs_diff: largest difference between plain and compiled outputs.
    """

    name: str
    ops: tuple[str, ...]
    host_ops: tuple[str, ...]
    missing: tuple[OpIssue, ...]
    jit_compiled: bool | None
    jit_error: str
    max_abs_diff: float

    @property
    def ok(self) -> bool:
        """No missing kernels and (if checked) XLA compiled with equal outputs."""
        return not self.missing and self.jit_compiled is not False


@dataclasses.dataclass(frozen=True)
class GpuReadiness:
    """`check_gpu_ready` result for a SavedModel.

    Attributes:
        path: the SavedModel directory.
        signatures: one `SignatureReadiness` per checked signature.
    """

    path: str
    signatures: tuple[SignatureReadiness, ...]

    @property
    def ok(self) -> bool:
        """Every signature passed."""
        return all(s.ok for s in self.signatures)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict."""
        return {
            "path": self.path,
            "ok": self.ok,
            "signatures": [
                {
                    **dataclasses.asdict(s),
                    "missing": [dataclasses.asdict(m) for m in s.missing],
                    "ok": s.ok,
                }
                for s in self.signatures
            ],
        }

    def __str__(self) -> str:
        lines = [f"GPU readiness of {self.path}: {'OK' if self.ok else 'NOT READY'}"]
        for s in self.signatures:
            jit = {
                None: s.jit_error or "not checked",
                True: "compiles",
                False: f"FAILED ({s.jit_error})",
            }[s.jit_compiled]
            lines.append(
                f"  {s.name}: {len(s.ops)} op types, "
                f"{'no missing GPU kernels' if not s.missing else 'missing GPU kernels: '}"
                + ", ".join(f"{m.op}[{', '.join(m.dtypes)}] x{m.count}" for m in s.missing)
                + f"; XLA: {jit}"
            )
        return "\n".join(lines)


# --------------------------------------------------------------------------------------------
# Graph walk
# --------------------------------------------------------------------------------------------
def _load_proto(path: Path) -> Any:
    pb = path / "saved_model.pb"
    if not pb.is_file():
        raise FileNotFoundError(f"No saved_model.pb in {str(path)!r}.")
    proto = saved_model_pb2.SavedModel()
    proto.ParseFromString(pb.read_bytes())
    for mg in proto.meta_graphs:
        if "serve" in mg.meta_info_def.tags:
            return mg
    return proto.meta_graphs[0]


def _called_functions(node: Any) -> list[str]:
    names = []
    for value in node.attr.values():
        if value.HasField("func"):
            names.append(value.func.name)
        elif value.HasField("list"):
            names.extend(f.name for f in value.list.func)
    return names


def _reachable_nodes(meta_graph: Any, signature: str) -> list[Any]:
    graph = meta_graph.graph_def
    by_name = {n.name: n for n in graph.node}
    library = {f.signature.name: f for f in graph.library.function}
    sig = meta_graph.signature_def[signature]
    stack = [t.name.split(":")[0] for t in sig.outputs.values()]
    seen: set[str] = set()
    nodes = []
    while stack:
        name = stack.pop().lstrip("^").split(":")[0]
        if name in seen or name not in by_name:
            continue
        seen.add(name)
        node = by_name[name]
        nodes.append(node)
        stack.extend(node.input)
    out = list(nodes)
    todo = [f for n in nodes for f in _called_functions(n)]
    done: set[str] = set()
    while todo:
        fname = todo.pop()
        if fname in done or fname not in library:
            continue
        done.add(fname)
        for node in library[fname].node_def:
            out.append(node)
            todo.extend(_called_functions(node))
    return out


_KERNEL_CACHE: dict[str, list] = {}


def _gpu_kernels(op: str) -> list:
    if op not in _KERNEL_CACHE:
        _KERNEL_CACHE[op] = [
            k
            for k in kernels.get_registered_kernels_for_op(op).kernel
            if k.device_type in _GPU_DEVICES
        ]
    return _KERNEL_CACHE[op]


def _has_gpu_kernel(node: Any) -> tuple[bool, tuple[str, ...]]:
    """Whether some GPU/DEFAULT kernel accepts the node's type attributes."""
    candidates = _gpu_kernels(node.op)
    types = {k: v.type for k, v in node.attr.items() if v.HasField("type")}
    rejected: set[str] = set()
    for kernel in candidates:
        fits = True
        for c in kernel.constraint:
            allowed = set(c.allowed_values.list.type)
            if c.name in types and allowed and types[c.name] not in allowed:
                fits = False
                rejected.add(f"{c.name}={tf.as_dtype(types[c.name]).name}")
        if fits:
            return True, ()
    if not candidates:
        return False, tuple(f"{k}={tf.as_dtype(v).name}" for k, v in sorted(types.items()))
    return False, tuple(sorted(rejected))


def ops_without_gpu_kernel(
    path: str | os.PathLike, signature: str = "serving_default"
) -> tuple[list[OpIssue], list[str], list[str]]:
    """Walks one signature of a SavedModel; see the module docstring.

    Returns:
        ``(missing, host_ops, all_ops)``: ops without a GPU kernel, ops accepted through
        `HOST_OPS`, and every reachable op type.
    """
    mg = _load_proto(Path(path))
    if signature not in mg.signature_def:
        raise KeyError(
            f"Signature {signature!r} not in {str(path)!r}; has {sorted(mg.signature_def)}."
        )
    missing: dict[tuple[str, tuple[str, ...]], int] = {}
    host: set[str] = set()
    ops: set[str] = set()
    accepted = HOST_OPS | RAW_ID_HOST_OPS if _has_string_ids(mg, signature) else HOST_OPS
    for node in _reachable_nodes(mg, signature):
        ops.add(node.op)
        ok, detail = _has_gpu_kernel(node)
        if ok:
            continue
        if node.op in accepted:
            host.add(node.op)
            continue
        key = (node.op, detail)
        missing[key] = missing.get(key, 0) + 1
    issues = [OpIssue(op, detail, n) for (op, detail), n in sorted(missing.items())]
    return issues, sorted(host), sorted(ops)


def _has_string_ids(meta_graph: Any, signature: str) -> bool:
    """Whether a signature takes or returns strings (raw string ids)."""
    sig = meta_graph.signature_def[signature]
    tensors = [*sig.inputs.values(), *sig.outputs.values()]
    return any(t.dtype == tf.string.as_datatype_enum for t in tensors)


# --------------------------------------------------------------------------------------------
# XLA check
# --------------------------------------------------------------------------------------------
def _example_inputs(path: Path, fn: Any, name: str, k: int | None) -> dict[str, tf.Tensor]:
    try:
        from tfembsize.export.saved_model import read_metadata, sample_inputs

        meta = read_metadata(path)
        if name in meta.get("signatures", {}):
            return sample_inputs(meta, name, k=k)
    except FileNotFoundError:
        pass
    specs = fn.structured_input_signature[1]
    out = {}
    for key, spec in specs.items():
        shape = [4 if d is None else d for d in spec.shape.as_list()]
        if spec.dtype.is_integer:
            out[key] = tf.zeros(shape, spec.dtype)
        elif spec.dtype.is_floating:
            size = int(np.prod(shape)) if shape else 1
            out[key] = tf.constant(
                np.linspace(-1, 1, size).reshape(shape).astype(spec.dtype.as_numpy_dtype)
            )
        else:
            raise ValueError(
                f"Cannot make an example input of dtype {spec.dtype.name} for {name!r}; pass "
                "inputs= to check_gpu_ready."
            )
    return out


def _jit_check(fn: Any, inputs: Mapping[str, tf.Tensor], atol: float) -> tuple[bool, str, float]:
    names = sorted(inputs)

    def call(*args: tf.Tensor) -> Any:
        return fn(**dict(zip(names, args, strict=True)))

    try:
        plain = fn(**inputs)
        compiled = tf.function(call, jit_compile=True)(*[inputs[n] for n in names])
    except Exception as err:  # noqa: BLE001 - reported, not raised
        return False, f"{type(err).__name__}: {str(err).strip().splitlines()[0][:300]}", np.nan
    worst = 0.0
    for key, value in plain.items():
        a, b = np.asarray(value), np.asarray(compiled[key])
        if a.shape != b.shape:
            return False, f"output {key!r}: shape {b.shape} under XLA vs {a.shape}", np.inf
        if a.size:
            if a.dtype.kind in "iu":
                diff = float(np.max(a != b))
            else:
                diff = float(np.max(np.abs(a.astype(np.float64) - b.astype(np.float64))))
            worst = max(worst, diff)
    if worst > atol:
        return False, f"outputs differ under XLA by up to {worst:.3g} (atol={atol})", worst
    return True, "", worst


def check_gpu_ready(
    path: str | os.PathLike,
    *,
    signatures: Iterable[str] | None = None,
    strict: bool = True,
    jit: bool = True,
    inputs: Mapping[str, Mapping[str, Any]] | None = None,
    k: int | None = None,
    atol: float = 1e-5,
) -> GpuReadiness:
    """Checks that a serving SavedModel runs on GPU and compiles with XLA (see module doc).

    Args:
        path: SavedModel directory.
        signatures: signatures to check (default: all).
        strict: raise `GpuReadinessError` when a check fails (else just report).
        jit: also run the XLA check.
        inputs: per signature, example inputs for the XLA check (default: valid inputs from
            the export metadata, or zeros/ramps from the input specs).
        k: ``k`` for the retrieval signature's example inputs (default: the export's).
        atol: tolerance between plain and compiled outputs (integer outputs must be equal).

    Returns:
        A `GpuReadiness` report.

    Raises:
        GpuReadinessError: ``strict`` and some check failed.

    Example:
        >>> print(check_gpu_ready("export/gowalla-bet-90"))
    """
    root = Path(os.fspath(path))
    mg = _load_proto(root)
    names = list(signatures) if signatures is not None else sorted(mg.signature_def)
    names = [n for n in names if n != "__saved_model_init_op"]
    loaded = tf.saved_model.load(str(root)) if jit else None
    results = []
    for name in names:
        missing, host, ops = ops_without_gpu_kernel(root, name)
        jit_ok: bool | None = None
        err, diff = "", 0.0
        if loaded is not None and _has_string_ids(mg, name):
            err = (
                "not applicable: string ids are mapped to rows on the host; the row "
                "computation between the maps is compiled when the export uses jit_compile"
            )
        elif loaded is not None:  # jit
            fn = loaded.signatures[name]
            example = (
                dict(inputs[name])
                if inputs and name in inputs
                else _example_inputs(root, fn, name, k)
            )
            example = {key: tf.convert_to_tensor(v) for key, v in example.items()}
            jit_ok, err, diff = _jit_check(fn, example, atol)
        results.append(
            SignatureReadiness(
                name=name,
                ops=tuple(ops),
                host_ops=tuple(host),
                missing=tuple(missing),
                jit_compiled=jit_ok,
                jit_error=err,
                max_abs_diff=float(diff),
            )
        )
    report = GpuReadiness(path=str(root), signatures=tuple(results))
    if strict and not report.ok:
        raise GpuReadinessError(str(report))
    logger.info("%s", report)
    return report
