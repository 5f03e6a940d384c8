"""The command line: every stage listed, stubs say so, prepare/info/quickstart, one-line errors."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
from conftest import write_npz
from typer.testing import CliRunner

from v2w_cli.app import app

runner = CliRunner()
STAGES = ("prepare", "pretrain", "causalize", "train", "rollout", "eval", "info", "quickstart", "encode")


def test_help_lists_every_stage():
    res = runner.invoke(app, ["--help"])
    assert res.exit_code == 0
    for stage in STAGES:
        assert stage in res.output


@pytest.mark.parametrize("stage", STAGES)
def test_every_command_has_help_with_an_example(stage):
    res = runner.invoke(app, [stage, "--help"])
    assert res.exit_code == 0 and "v2w " in res.output


def test_prepare_json_and_info(tmp_path):
    src = write_npz(tmp_path / "src")
    res = runner.invoke(app, ["prepare", str(src), "--out", str(tmp_path / "data"), "--clip-len", "6", "--json"])
    assert res.exit_code == 0, res.output
    summary = json.loads(res.stdout)
    assert summary["splits"]["train"]["samples"] + summary["splits"]["val"]["samples"] == 3 + 4 + 3 + 5
    res = runner.invoke(app, ["info", str(tmp_path / "data"), "--json"])
    assert res.exit_code == 0 and json.loads(res.stdout)["kind"] == "v2w-dataset"
    res = runner.invoke(app, ["info", str(tmp_path / "data")])
    assert res.exit_code == 0 and "v2w-dataset" in res.output


def test_bad_input_is_one_line_and_nonzero(tmp_path):
    src = write_npz(tmp_path / "src")
    (src / "episode_1.npz").write_bytes(b"garbage")
    res = runner.invoke(app, ["prepare", str(src), "--out", str(tmp_path / "data")])
    assert res.exit_code == 1
    lines = [ln for ln in res.output.strip().splitlines() if ln.strip()]
    assert lines[-1].startswith("error:") and "episode_1.npz" in res.output
    assert "Traceback" not in res.output
    res = runner.invoke(app, ["prepare", str(src), "--out", str(tmp_path / "d"), "--size", "64"])
    assert res.exit_code == 1 and "--size must look like HxW" in res.output
    res = runner.invoke(app, ["info", str(tmp_path / "nothing")])
    assert res.exit_code == 1 and "not found" in res.output


def test_console_script_entry_point():
    out = subprocess.run([sys.executable, "-m", "v2w_cli", "--version"], capture_output=True, text=True)
    assert out.returncode == 0 and out.stdout.startswith("v2w ")


def test_quickstart_smoke(tmp_path):
    res = runner.invoke(app, ["quickstart", "--out", str(tmp_path / "qs"), "--smoke", "--json"])
    assert res.exit_code == 0, res.output
    summary = json.loads(res.stdout)
    assert set(summary["metrics"]) == {"model", "copy-last", "shuffled-actions"}
    assert summary["metrics"]["copy-last"]["psnr"] > 0 and len(summary["losses"]) == 2
    assert summary["model"].endswith("tiny-world-model")
    report = (tmp_path / "qs" / "report.md").read_text()
    assert "| copy-last |" in report and (tmp_path / "qs" / "side_by_side.gif").exists()
    assert (tmp_path / "qs" / "report" / "horizon.png").exists()
    # counterfactual branches were recorded, rolled out and scored; the action sweep is in the report
    assert summary["counterfactual_gain"]["psnr"] is not None
    assert "Counterfactual actions" in report and "## Action sweep" in report
    sweep = np.load(tmp_path / "qs" / "sweep" / "sweep.npz")
    assert sweep["frames"].shape[:2] == (5, 8) and (tmp_path / "qs" / "sweep" / "sweep.png").exists()
