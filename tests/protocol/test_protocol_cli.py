"""The protocol's command line: options generated from settings dataclasses, and the seam."""

from __future__ import annotations

import importlib.util
import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pytest

from tfembsize.protocol import MethodOutput, cli, register_method, unregister_method
from tfembsize.protocol.settings import setting, setting_options

REPO = Path(__file__).resolve().parents[2]
FAST = ["--d-max", "8", "--lr", "0.01", "--batch-size", "128", "--max-steps", "20"]
FAST += ["--eval-every", "20", "--verbose", "0"]


# A new method, as a later controller would add it: its settings and its function. -------------
@dataclass(frozen=True)
class ToySettings:
    """Options of the toy method: one size for every row."""

    size: int = setting(1, help="toy: the size of every row", aliases=("--toy-d",))
    label: str = setting("plain", help="toy: a name recorded in the cell")

    def __post_init__(self) -> None:
        if isinstance(self.size, bool) or not isinstance(self.size, int) or self.size < 1:
            raise ValueError(f"`size` must be a positive integer. Received: size={self.size!r}")


def toy_method(ctx):
    settings = ctx.settings()
    obs = ctx.observation()
    plan = obs.plan_from_sizes(
        np.full(obs.num_users, settings.size), np.full(obs.num_items, settings.size)
    )
    return MethodOutput(plan=plan, info={"settings": asdict(settings)})


# -------------------------------------------------------------------------------------------------


@pytest.fixture
def toy():
    register_method("toy", toy_method, settings=ToySettings)  # the one registration line
    yield
    unregister_method("toy")


def test_a_new_method_with_its_own_settings_runs_through_the_command_line(tmp_path, toy):
    out = tmp_path / "out"
    argv = ["--dataset", "synthetic", "--methods", "toy,es", "--sparsity", "0.75"]
    argv += ["--toy-size", "2", "--toy-label", "two", "--out", str(out), *FAST]
    assert cli.main(argv) == 0
    results = json.loads((out / "results.json").read_text())
    assert results["config"]["method_options"] == {"toy": {"size": 2, "label": "two"}}
    assert results["command"] == "python -m tfembsize.protocol " + " ".join(argv)
    cells = {c["method"]: c for c in results["cells"]}
    rows = results["dataset"]["num_entities"]
    assert cells["toy"]["usable_params"] == 2 * rows  # size 2 = floor(0.25 * 8): the budget
    assert cells["toy"]["usable_params"] == cells["es"]["usable_params"]
    assert cells["toy"]["info"]["settings"] == {"size": 2, "label": "two"}
    # the alias reaches the same field; a bad value is refused naming the option and value
    assert cli.parse_args(["--toy-d", "3"]).method_settings == {"toy": {"size": 3}}
    with pytest.raises(SystemExit):
        cli.parse_args(["--toy-size", "0"])


def test_bet_options_and_their_recorded_aliases(capsys):
    long = cli.parse_args(["--bet-search-iterations", "3", "--bet-finetune-epochs", "2"])
    old = cli.parse_args(["--bet-iterations", "3", "--bet-epochs", "2"])
    assert long.method_settings == old.method_settings
    assert old.method_settings == {"bet": {"search_iterations": 3, "finetune_epochs": 2.0}}
    args = cli.parse_args(["--methods", "es,bet-random,bet", "--bet-top-k", "1"])
    config = cli.build_config(args)
    # one option group for BET and its ablations, recorded for the BET methods of the run only
    assert config.method_options == {"bet-random": {"top_k": 1}, "bet": {"top_k": 1}}
    assert cli.build_config(cli.parse_args(["--methods", "es,bet"])).method_options == {}
    for argv, message in [
        (["--bet-top-k", "0"], "argument --bet-top-k: invalid value 0: `top_k` must be a "),
        (["--bet-epochs", "-1"], "argument --bet-finetune-epochs/--bet-epochs: invalid value -1.0"),
        (["--bet-candidates", "x"], "argument --bet-num-candidates/--bet-candidates: invalid"),
        (["--pep-rewind", "late"], "`rewind` must be 'initial' or 'fresh'. Received"),
        (["--pep-max-steps", "0"], "`max_steps` must be a positive integer"),
    ]:
        with pytest.raises(SystemExit):
            cli.parse_args(argv)
        assert message in capsys.readouterr().err, argv


def test_default_out_unknown_methods_and_the_method_list(tmp_path, capsys):
    config = cli.build_config(cli.parse_args(["--dataset", "synthetic", "--backbone", "mf"]))
    assert config.out == str(Path("paper_protocol") / "synthetic_mf")
    assert cli.main(["--methods", "es,nope", "--out", str(tmp_path)]) == 2
    assert "Unknown method 'nope'" in capsys.readouterr().err
    assert cli.main(["--list-methods"]) == 0
    listing = capsys.readouterr().out
    assert "bet-random" in listing and "pep" in listing and "budgeted" in listing


def test_settings_are_checked_at_registration():
    @dataclass
    class Mutable:
        x: int = 1

    @dataclass(frozen=True)
    class NoDefault:
        x: int

    @dataclass(frozen=True)
    class Listy:
        x: list = setting(None, help="a list")

    with pytest.raises(TypeError, match="must be a frozen dataclass"):
        register_method("bad-settings", toy_method, settings=Mutable)
    with pytest.raises(TypeError, match="NoDefault.x has none"):
        register_method("bad-settings", toy_method, settings=NoDefault)
    with pytest.raises(TypeError, match="Listy.x has type"):
        setting_options("listy", Listy)
    with pytest.raises(ValueError, match="Option group 'bet' belongs to method"):
        register_method("bet-clone", toy_method, settings=ToySettings, group="bet")
    with pytest.raises(ValueError, match="`aliases` must be flags"):
        setting(1, aliases=("x",))


def _script(name: str):
    """Imports ``benchmarks/<name>.py`` by path (a thin wrapper of the package)."""
    spec = importlib.util.spec_from_file_location(f"_bench_{name}", REPO / "benchmarks" / name)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_benchmark_scripts_are_thin_wrappers_with_the_same_paths_and_command(tmp_path):
    script = _script("paper_protocol.py")
    config = script.build_config(script.parse_args(["--dataset", "synthetic"]))
    assert config.out == str(REPO / "benchmarks" / "results" / "paper_protocol" / "synthetic_mf")
    out = tmp_path / "out"
    argv = ["--dataset", "synthetic", "--methods", "es", "--max-cells", "0", "--out", str(out)]
    assert script.main([*argv, *FAST]) == 0
    results = json.loads((out / "results.json").read_text())
    assert results["command"].startswith("python benchmarks/paper_protocol.py --dataset")
    assert results["pending"] == ["es__c0.8__seed0", "es__c0.9__seed0", "es__c0.95__seed0"]
