"""Runs in a subprocess: an in-process cluster (1 worker, 2 parameter servers) on localhost.

Prints one JSON line: per partitioner and layer kind, the largest difference between the
weights after the same steps on one device and under ParameterServerStrategy (tables and
per-row variables sharded), the shard counts, and the export comparison; or the error a
combination raises.
"""

from __future__ import annotations

import json
import os
import re
import socket
import sys
import tempfile

import numpy as np
import tensorflow as tf
from _models import KINDS, batches, make, max_difference, train_single

from tfembsize._keras import is_legacy_keras, keras


def _port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return int(s.getsockname()[1])


SPEC = tf.train.ClusterSpec(
    {"worker": [f"localhost:{_port()}"], "ps": [f"localhost:{_port()}", f"localhost:{_port()}"]}
)
SERVERS = [
    tf.distribute.Server(SPEC, job_name=job, task_index=i, protocol="grpc", start=True)
    for job in ("worker", "ps")
    for i in range(len(SPEC.as_dict()[job]))
]
RESOLVER = tf.distribute.cluster_resolver.SimpleClusterResolver(SPEC, rpc_layer="grpc")
partitioners = tf.distribute.experimental.partitioners
PARTITIONERS = {
    "fixed": partitioners.FixedShardsPartitioner(2),
    "min_size": partitioners.MinSizePartitioner(min_shard_bytes=256, max_shards=2),
    "none": None,
}


def _groups(model) -> list[list]:
    """The model's variables grouped by name, shards of one variable together, in order."""
    out: dict[str, list] = {}
    for v in model.weights:
        out.setdefault(re.sub(r"/part_\d+", "", getattr(v, "path", v.name)), []).append(v)
    return list(out.values())


def _assign(model, values) -> None:
    for group, value in zip(_groups(model), values, strict=True):
        start = 0
        for v in group:
            n = int(v.shape[0]) if len(group) > 1 else None
            v.assign(value if n is None else value[start : start + n])
            start += n or 0


def _values(model) -> list[np.ndarray]:
    return [
        np.concatenate([np.asarray(v.numpy()) for v in g]) if len(g) > 1 else g[0].numpy()
        for g in _groups(model)
    ]


def train(strategy, kind: str) -> dict:
    init, single, _ = train_single(kind)
    with strategy.scope():
        model = make(kind)
    shards = {
        name: len(g) for name, g in zip(("table", "per_row"), _groups(model)[:2], strict=True)
    }
    # A partitioned initializer draws each shard on its own: start from the same values.
    _assign(model, init)
    coordinator = tf.distribute.experimental.coordinator.ClusterCoordinator(strategy)

    @tf.function
    def step(batch):
        return strategy.run(lambda b: model.train_batch(b).loss, args=(batch,))

    for b in batches():
        coordinator.schedule(step, args=({k: tf.constant(v) for k, v in b.items()},))
        coordinator.join()
    return {"weights": max_difference(single, _values(model)), "shards": shards, "model": model}


def export(model, kind: str) -> dict:
    """Compressed SavedModel of a sharded model vs of the same weights unsharded."""
    from tfembsize.export import save_compressed

    values = _values(model)
    plain = make(kind)
    _assign(plain, values)
    ids = tf.constant([0, 3, 7, 11, 29], tf.int64)
    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        served, stored = [], []
        for name, m in (("sharded", model), ("plain", plain)):
            path = os.path.join(tmp, name)
            save_compressed(m, path, signatures="retrieval", k=5)
            loaded = tf.saved_model.load(path)
            served.append(loaded.signatures["embed_items"](item_ids=ids))
            reader = tf.train.load_checkpoint(os.path.join(path, "variables", "variables"))
            stored.append(
                {
                    k: reader.get_tensor(k).tobytes()
                    for k in sorted(reader.get_variable_to_shape_map())
                    if not k.startswith("_CHECKPOINTABLE")
                }
            )
        out["served"] = max(
            float(np.max(np.abs(served[0][k].numpy() - served[1][k].numpy()))) for k in served[0]
        )
        out["same_bytes"] = stored[0] == stored[1]
        out["variables"] = len(stored[0])
    return out


def main(names: list[str]) -> dict:
    report: dict = {"legacy": is_legacy_keras()}
    for pname in names:
        partitioner = PARTITIONERS[pname]
        strategy = tf.distribute.experimental.ParameterServerStrategy(
            RESOLVER, variable_partitioner=partitioner
        )
        for kind in KINDS:
            key = f"{pname}/{kind}"
            try:
                res = train(strategy, kind)
                model = res.pop("model")
                if pname == "fixed" and kind in ("budgeted", "pep"):
                    res["export"] = export(model, kind)
                report[key] = res
            except Exception as err:  # noqa: BLE001 - the combination's error is the result
                report[key] = {"error": f"{type(err).__name__}: {str(err).splitlines()[0]}"}
                if "error" in report[key] and not is_legacy_keras():
                    report[key]["error"] += " | " + str(err).strip().splitlines()[-1].strip()
            keras.backend.clear_session()
    return report


if __name__ == "__main__":
    print("RESULT " + json.dumps(main(sys.argv[1:] or list(PARTITIONERS))), flush=True)
    sys.stdout.flush()
    os._exit(0)  # the servers' threads do not stop on their own
