"""v2w rollout (the stage): bad actions files, batch layout with shuffled actions, interactive CLI outputs."""

from __future__ import annotations

import json

import numpy as np
import pytest
from typer.testing import CliRunner

from pipelines.errors import V2WError
from pipelines.models.world_model import load_model
from pipelines.rollout import RolloutJob, read_actions_file, run_batch
from pipelines.sampler import RolloutConfig
from v2w_cli.app import app


def test_bad_actions_files(rollout_env, tmp_path):
    model = load_model(rollout_env / "model")
    cases = {
        "wide.npy": (np.zeros((5, 3), np.float32), r"must be \(H, 4\) or \(H,\) integer ids"),
        "ids.npy": (np.array([0, 1, 7]), r"action ids must be in \[0, 4\)"),
        "nan.npy": (np.full((3, 4), np.nan, np.float32), "finite"),
        "rank3.npy": (np.zeros((2, 2, 4), np.float32), "one row per predicted frame"),
    }
    for name, (arr, msg) in cases.items():
        np.save(tmp_path / name, arr)
        with pytest.raises(V2WError, match=msg):
            read_actions_file(str(tmp_path / name), model)
    np.save(tmp_path / "short.npy", np.array([0, 1]))
    with pytest.raises(V2WError, match="2 action rows for a horizon of 5"):
        read_actions_file(str(tmp_path / "short.npy"), model, horizon=5)
    np.save(tmp_path / "obj.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(V2WError, match="cannot load actions"):
        read_actions_file(str(tmp_path / "obj.npy"), model)
    assert read_actions_file(str(tmp_path / "ids.npy").replace("ids", "short"), model).shape == (2, 4)


def test_batch_mode_layout_and_shuffled_actions(rollout_env, tmp_path):
    job = RolloutJob(model=str(rollout_env / "model"), out=str(tmp_path / "pred"), data=str(rollout_env / "data"), limit=3,
                     shuffle_actions=True, context_frames=2, batch_size=2)
    info = run_batch(job, RolloutConfig(steps=2))
    files = sorted((tmp_path / "pred" / "clips").glob("*.npz"))
    assert len(files) == 3 == info["clips"] and info["horizon"] == 4
    shuffled = {f.name: np.load(f) for f in (tmp_path / "pred" / "shuffled").glob("*.npz")}
    for f in files:
        d = np.load(f)
        assert d["context"].shape == (2, 32, 32, 3) and d["pred"].shape == d["ref"].shape == (4, 32, 32, 3)
        assert d["pred"].dtype == np.uint8 and d["actions"].shape == (6, 4)
        s = shuffled[f.name]
        assert np.array_equal(s["ref"], d["ref"]) and not np.array_equal(s["actions"], d["actions"])
    assert json.loads((tmp_path / "pred" / "rollout.json").read_text())["shuffled"] is True


def test_cli_interactive_outputs(rollout_env, tmp_path):
    frames = (np.random.default_rng(0).random((2, 32, 32, 3)) * 255).astype(np.uint8)
    np.save(tmp_path / "ctx.npy", frames)
    np.save(tmp_path / "acts.npy", np.array([1, 2, 3]))
    res = CliRunner().invoke(app, ["rollout", "--model", str(rollout_env / "model"), "--context", str(tmp_path / "ctx.npy"),
                                   "--context-frames", "2", "--actions", str(tmp_path / "acts.npy"), "--out",
                                   str(tmp_path / "o"), "--steps", "2", "--json"])
    assert res.exit_code == 0, res.output
    info = json.loads(res.stdout)
    assert info["horizon"] == 3 and len(info["seconds_per_frame"]) == 3 and info["settings"]["seed"] == 0
    out = np.load(tmp_path / "o" / "frames.npy")
    assert out.shape == (5, 32, 32, 3) and np.array_equal(out[:2], frames)
    assert (tmp_path / "o" / "video.mp4").stat().st_size > 0 and (tmp_path / "o" / "grid.png").exists()
    res = CliRunner().invoke(app, ["rollout", "--model", str(rollout_env / "pooled"), "--context", str(tmp_path / "ctx.npy"),
                                   "--actions", str(tmp_path / "acts.npy"), "--out", str(tmp_path / "p"), "--cache"])
    assert res.exit_code == 1 and "per-frame temporal norms" in res.output
