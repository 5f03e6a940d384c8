"""``v2w train --resume-if-exists``: a preemptible job runs the same command every time; it starts
fresh on an empty RUN and resumes once there is a checkpoint. A truncated checkpoint file is then a
one-line error naming it."""

from __future__ import annotations

import json

import pytest
from test_train import cfg, setup  # noqa: F401  (the tiny model + Breakout DATA fixture)
from typer.testing import CliRunner

from pipelines.errors import V2WError
from pipelines.train import TrainConfig, list_checkpoints, run
from v2w_cli.app import app, normalize_argv


def test_resume_if_exists_starts_fresh_then_resumes(setup, tmp_path):  # noqa: F811
    out = tmp_path / "run"
    logs: list[str] = []
    first = run(cfg(setup, out, steps=2, resume_if_exists=True, ema_decay=0), log=logs.append)
    assert first.resumed_from == 0 and first.steps == 2
    assert any("no checkpoint" in m and "starting fresh" in m for m in logs), logs
    assert [s for s, _ in list_checkpoints(out)] == [2]
    args = ["train", "--model", str(setup / "model"), "--data", str(setup / "data"), "--out", str(out), "--steps", "4",
            "--batch-size", "2", "--save-every", "2", "--lr", "1e-4", "--ema-decay", "0", "--device", "cpu",
            "--resume-if-exists", "--json"]
    res = CliRunner().invoke(app, normalize_argv(args))
    assert res.exit_code == 0, res.output
    summary = json.loads(res.stdout)
    assert summary["resumed_from"] == 2 and summary["steps"] == 4
    # without the flag a RUN with checkpoints is still refused, and the two flags do not mix
    with pytest.raises(V2WError, match="has checkpoints already; pass --resume"):
        run(cfg(setup, out, steps=6, ema_decay=0))
    with pytest.raises(V2WError, match="--resume .* or --resume-if-exists, not both"):
        TrainConfig(model="m", data="d", out="o", resume="latest", resume_if_exists=True)
    # a checkpoint cut short (a half-copied RUN) is one error naming the file
    _, newest = list_checkpoints(out)[-1]
    for name in ("optimizer.pt", "model.safetensors", "state.json"):
        f = newest / name
        good = f.read_bytes()
        f.write_bytes(good[: len(good) // 2])
        with pytest.raises(V2WError, match=r"is truncated or corrupt .*re-copy or re-create it") as e:
            run(cfg(setup, out, steps=6, resume_if_exists=True, ema_decay=0))
        assert str(e.value).startswith(f"{f}: ")
        f.write_bytes(good)
