"""tfembsize under tf.distribute: MirroredStrategy and ParameterServerStrategy.

Each strategy runs in a subprocess (two logical CPUs must be configured before TensorFlow
starts its devices; the local parameter servers of a cluster must go away with it), once
per module, in the Keras mode of the test run. The subprocess trains the same tiny models on
the same batches on one device and under the strategy and reports the differences.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tfembsize._keras import is_legacy_keras

HERE = Path(__file__).resolve().parent
KINDS = ("masked", "budgeted", "pep", "ladder")
TOL = 1e-5


def _run(script: str, *args: str) -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(HERE.parents[1]), env.get("PYTHONPATH", "")])
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    proc = subprocess.run(
        [sys.executable, str(HERE / script), *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
        check=False,
    )
    lines = [x for x in proc.stdout.splitlines() if x.startswith("RESULT ")]
    assert lines, f"{script} printed no result (exit {proc.returncode}):\n{proc.stderr[-4000:]}"
    return json.loads(lines[-1][len("RESULT ") :])


# Fast: the layers, train_bpr and two small searches under MirroredStrategy (one
# subprocess), the layers and the export under ParameterServerStrategy with
# FixedShardsPartitioner (one subprocess). Slow: the other partitioners.
@pytest.fixture(scope="module")
def mirrored() -> dict:
    return _run("_mirrored.py", "layers", "train_loop", "search")


@pytest.fixture(scope="module")
def parameter_server() -> dict:
    return _run("_parameter_server.py", "fixed")


@pytest.fixture(scope="module")
def parameter_server_more() -> dict:
    return _run("_parameter_server.py", "min_size", "none")


@pytest.mark.parametrize("kind", KINDS)
def test_layers_train_as_on_one_device_under_mirrored_strategy(mirrored, kind):
    res = mirrored["layers"][kind]
    assert res["variable"] == "MirroredVariable"  # the strategy made the table
    assert res["weights"] < TOL
    assert res["losses"] < TOL


def test_train_bpr_under_mirrored_strategy_equals_one_device(mirrored):
    res = mirrored["train_loop"]
    assert res["weights"] < TOL
    assert res["value"] < 1e-6
    assert res["loss"] < 1e-5


@pytest.mark.parametrize("controller", ["bet", "ciess"])
def test_search_runs_under_mirrored_strategy_within_budget(mirrored, controller):
    res = mirrored["search"][controller]
    assert res["variable"] == "MirroredVariable"
    assert res["steps"] >= 2 and all(res["ok"]) and res["finite"]
    assert res["plan_params"] is not None and res["plan_params"] <= res["budget"]


def _check_parameter_server(report: dict, partitioner: str, kind: str) -> None:
    res = report[f"{partitioner}/{kind}"]
    if partitioner != "none" and not is_legacy_keras():
        # Keras 3 wraps the ShardedVariable in its own variable, and GradientTape reads
        # `.handle`, which a ShardedVariable does not have.
        assert "ShardedVariable' object has no attribute 'handle'" in res["error"]
        pytest.skip(f"Keras 3 cannot train a ShardedVariable: {res['error']}")
    assert "error" not in res, res
    assert res["weights"] < TOL
    if partitioner == "none":
        assert res["shards"] == {"table": 1, "per_row": 1}
    else:
        assert res["shards"]["table"] == 2
    if partitioner == "fixed":  # every per-row variable split at the table's row bounds
        assert res["shards"]["per_row"] == 2


@pytest.mark.parametrize("kind", KINDS)
def test_layers_train_as_on_one_device_under_parameter_server_strategy(parameter_server, kind):
    _check_parameter_server(parameter_server, "fixed", kind)


@pytest.mark.slow
@pytest.mark.parametrize("partitioner", ["min_size", "none"])
@pytest.mark.parametrize("kind", KINDS)
def test_layers_under_parameter_server_strategy_other_partitioners(
    parameter_server_more, partitioner, kind
):
    _check_parameter_server(parameter_server_more, partitioner, kind)


@pytest.mark.parametrize("kind", ["budgeted", "pep"])
def test_export_of_a_sharded_model_equals_the_unsharded_export(parameter_server, kind):
    res = parameter_server[f"fixed/{kind}"]
    if not is_legacy_keras():
        pytest.skip(f"Keras 3 cannot train a ShardedVariable: {res['error']}")
    assert res["export"]["same_bytes"] is True
    assert res["export"]["variables"] >= 5
    assert res["export"]["served"] == 0.0
