"""Exit codes and one-line messages of the command line (fast: no training)."""

from __future__ import annotations

import json
import sys

import pytest

ES = ["--method", "es", "--sparsity", "0.5"]


def _one_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert "Traceback" not in err
    return lines[0]


@pytest.mark.parametrize(
    ("option", "value", "named"),
    [
        ("--sparsity", "1.5", "--sparsity"),
        ("--sparsity", "0.5,abc", "--sparsity"),
        ("--d-max", "0", "--d-max"),
        ("--backbone", "bert", "--backbone"),
        ("--bet-top-k", "0", "--bet-top-k"),
        ("--method", "nope", "--method"),
    ],
)
def test_a_bad_option_value_exits_2_naming_the_option(cli, tiny, tmp_path, option, value, named):
    result = cli("search", *tiny, option, value, "--run-dir", str(tmp_path / "run"))
    assert result.code == 2
    line = _one_line(result.err)
    assert named in line and value.split(",")[-1] in line
    assert not (tmp_path / "run").exists()  # nothing written


def test_missing_or_empty_data_exits_3(cli, tiny, tmp_path):
    missing = cli("search", *tiny, *ES, "--data-dir", str(tmp_path / "nope"), "--run-dir", "r")
    assert missing.code == 3
    assert "--data-dir" in _one_line(missing.err) and "nope" in missing.err
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "train.txt").write_text("")
    (empty / "test.txt").write_text("")
    result = cli("search", *tiny, *ES, "--data-dir", str(empty), "--run-dir", str(tmp_path / "r"))
    assert result.code == 3
    assert "train.txt" in result.err and "Traceback" not in result.err


def test_a_damaged_state_file_exits_4_naming_it(cli, tiny, tmp_path):
    run = tmp_path / "run"
    assert cli("search", *tiny, *ES, "--run-dir", str(run), "-q").code == 0
    plan = run / "plans" / "c0.5.json"
    payload = json.loads(plan.read_text())
    payload["tables"]["user_embedding"][0] = 8  # edited after it was written
    plan.write_text(json.dumps(payload))
    result = cli("retrain", str(run))
    assert result.code == 4
    assert str(plan) in result.err and "Traceback" not in result.err
    (run / "run.json").write_text('{"format": "tfembsize.CliRun", "options": ')
    broken = cli("report", str(run))
    assert broken.code == 4 and "run.json" in broken.err


def test_an_infeasible_budget_exits_5(cli, tiny, tmp_path):
    # 0.01 * 8 * 2500 = 200 parameters for 2500 rows: fewer than one per row.
    result = cli("search", *tiny, "--sparsity", "0.99", "--run-dir", str(tmp_path / "run"))
    assert result.code == 5
    line = _one_line(result.err.splitlines()[-1])
    assert "200" in line and "--sparsity" in line


def test_errors_show_a_traceback_only_with_debug(cli, tiny, tmp_path):
    argv = ["search", *tiny, "--sparsity", "0.99", "-q", "--run-dir", str(tmp_path / "r")]
    assert "Traceback" not in cli(*argv).err
    debug = cli(*argv, "--debug")
    assert debug.code == 5 and "Traceback" in debug.err


def test_another_config_on_a_run_dir_and_a_folder_without_a_run(cli, tiny, tmp_path):
    run = tmp_path / "run"
    assert cli("search", *tiny, *ES, "--run-dir", str(run), "-q").code == 0
    other = cli("search", *tiny, "--method", "mr", "--sparsity", "0.5", "--run-dir", str(run))
    assert other.code == 2
    assert "method: 'es' there, 'mr' now" in _one_line(other.err)
    assert cli("retrain", str(tmp_path)).code == 2
    assert cli("report", str(tmp_path / "none")).code == 2
    pep = cli("search", *tiny, "--method", "pep", "--run-dir", str(tmp_path / "pep"))
    assert pep.code == 2 and "python -m tfembsize.protocol" in pep.err


def test_plot_without_matplotlib_says_how_to_install_it(cli, tiny, tmp_path, monkeypatch):
    run = tmp_path / "run"
    assert cli("search", *tiny, *ES, "--run-dir", str(run), "-q").code == 0
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib fails
    result = cli("plot", str(run))
    assert result.code == 6
    assert 'pip install "tfembsize[plots]"' in _one_line(result.err)


def test_a_full_disk_exits_4_and_a_rerun_resumes(cli, tiny, tmp_path, monkeypatch):
    import errno

    from tfembsize import _io
    from tfembsize.plan import SizePlan

    run = tmp_path / "run"
    save = SizePlan.save

    def full_disk(self, path):
        raise _io.write_error(path, OSError(errno.ENOSPC, "No space left on device"))

    monkeypatch.setattr(SizePlan, "save", full_disk)
    argv = ["search", *tiny, "--method", "es", "--sparsity", "0.5", "--run-dir", str(run)]
    result = cli(*argv)
    assert result.code == 4
    assert "c0.5.json" in _one_line(result.err.splitlines()[-1])
    monkeypatch.setattr(SizePlan, "save", save)
    assert cli(*argv).code == 0 and (run / "plans" / "c0.5.json").is_file()
