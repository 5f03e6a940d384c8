"""Every artifact reader turns a missing, truncated or corrupt file into one V2WError naming it.

Each reader gets a tiny valid file cut in half (a half-copied download); then end to end: the
shipped MODEL with a truncated model.safetensors, through ``load_model`` and the CLI. Also the
prepare error for videos without their actions files.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from pipelines.errors import V2WError

ASSET = Path(__file__).resolve().parents[1] / "pipelines" / "assets" / "tiny-world-model"
CORRUPT = r"is truncated or corrupt \(.+\); re-copy or re-create it"


def halve(path: Path) -> Path:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


def assert_names(err: pytest.ExceptionInfo, path: Path) -> None:
    msg = str(err.value)
    assert msg.startswith(f"{path}: ") and "\n" not in msg and "Traceback" not in msg, msg


# ---------------------------------------------------------------- one reader each


def test_read_json_truncated_and_not_an_object(tmp_path):
    from pipelines.fileio import read_artifact, read_json

    f = tmp_path / "state.json"
    f.write_text(json.dumps({"step": 2, "lr_scheduler": {"last_epoch": 2}, "processes": [{"rank": 0}]}))
    assert read_json(f)["step"] == 2
    halve(f)
    with pytest.raises(V2WError, match="JSON " + CORRUPT) as e:
        read_json(f)
    assert_names(e, f)
    f.write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(V2WError, match="JSON " + CORRUPT):
        read_json(f)
    with pytest.raises(V2WError, match="file not found"):
        read_json(tmp_path / "nope.json")
    (tmp_path / "config.json").write_text("[1, 2]")
    with pytest.raises(V2WError, match="not a v2w config.json") as e:
        read_artifact(tmp_path, "config.json", "v2w-model", 1, "v2w train")
    assert_names(e, tmp_path / "config.json")


def test_data_manifest_truncated(tmp_path):
    from pipelines.data.prepare import load_manifest

    f = tmp_path / "data" / "manifest.json"
    f.parent.mkdir()
    f.write_text(json.dumps({"kind": "v2w-dataset", "format_version": 1, "splits": {"train": {"samples": 3}}}))
    assert load_manifest(tmp_path / "data")["splits"]["train"]["samples"] == 3
    halve(f)
    with pytest.raises(V2WError, match=CORRUPT) as e:
        load_manifest(tmp_path / "data")
    assert_names(e, f)


@pytest.mark.parametrize("name", ["model.safetensors", "ema.safetensors", "vae.safetensors", "empty_text.safetensors"])
def test_read_safetensors_truncated(tmp_path, name):
    from safetensors.torch import save_file

    from pipelines.statedict import read_safetensors

    f = tmp_path / name
    save_file({"a": torch.arange(64.0), "b": torch.ones(3, 5)}, str(f))
    assert torch.equal(read_safetensors(f, device="cpu:0")["a"], torch.arange(64.0))
    halve(f)
    with pytest.raises(V2WError, match="safetensors file " + CORRUPT) as e:
        read_safetensors(f)
    assert_names(e, f)
    f.write_bytes(b"")
    with pytest.raises(V2WError, match=CORRUPT):
        read_safetensors(f)
    with pytest.raises(V2WError, match="file not found"):
        read_safetensors(tmp_path / "missing.safetensors")


def test_read_torch_truncated_empty_legacy_and_pickled_code(tmp_path):
    import datetime

    from pipelines.statedict import read_torch

    f = tmp_path / "optimizer.pt"
    opt = torch.optim.AdamW([torch.nn.Parameter(torch.ones(8))])
    torch.save(opt.state_dict(), f)
    assert read_torch(f)["param_groups"][0]["lr"] == opt.param_groups[0]["lr"]
    halve(f)
    with pytest.raises(V2WError, match="checkpoint " + CORRUPT) as e:
        read_torch(f)
    assert_names(e, f)
    assert "internal miniz error" not in str(e.value)  # torch's advice paragraph is cut
    f.write_bytes(b"")
    for mmap in (False, True):
        with pytest.raises(V2WError, match=CORRUPT):
            read_torch(f, mmap=mmap)
    legacy = tmp_path / "legacy.ckpt"
    torch.save({"state_dict": {"w": torch.zeros(4)}}, legacy, _use_new_zipfile_serialization=False)
    assert torch.equal(read_torch(legacy, mmap=True)["state_dict"]["w"], torch.zeros(4))  # falls back from mmap
    halve(legacy)
    with pytest.raises(V2WError, match=CORRUPT) as e:
        read_torch(legacy, mmap=True)
    assert_names(e, legacy)
    code = tmp_path / "code.pt"
    torch.save({"when": datetime.date(2020, 1, 1)}, code)
    with pytest.raises(V2WError, match="pickles more than tensors.*--unsafe-pickle"):
        read_torch(code)
    assert read_torch(code, unsafe_pickle=True)["when"].year == 2020


@pytest.mark.parametrize("suffix", [".ckpt", ".safetensors"])
def test_dynamicrafter_base_checkpoint_truncated(tmp_path, suffix):
    from safetensors.torch import save_file

    from pipelines.models.checkpoint import load_state_dict

    f = tmp_path / f"model{suffix}"
    sd = {"model.diffusion_model.out.2.weight": torch.randn(4, 8, 3, 3), "first_stage_model.x": torch.zeros(16)}
    if suffix == ".ckpt":
        torch.save({"state_dict": sd, "global_step": 1}, f)
    else:
        save_file(sd, str(f))
    assert set(load_state_dict(f)) == set(sd)
    halve(f)
    with pytest.raises(V2WError) as e:
        load_state_dict(f)
    assert_names(e, f)


# ---------------------------------------------------------------- a MODEL folder end to end


@pytest.fixture
def model_copy(tmp_path) -> Path:
    return Path(shutil.copytree(ASSET, tmp_path / "model"))


@pytest.mark.parametrize("name", ["model.safetensors", "vae.safetensors", "image_encoder.safetensors",
                                  "image_proj.safetensors", "empty_text.safetensors", "config.json"])
def test_load_model_with_a_truncated_file(model_copy, name):
    from pipelines.models import load_model

    if not (model_copy / name).exists():
        pytest.skip(f"the shipped model has no {name}")
    halve(model_copy / name)
    with pytest.raises(V2WError, match=CORRUPT) as e:
        load_model(model_copy)
    assert_names(e, model_copy / name)


def _one_error_line(res, path: Path) -> str:
    lines = [ln for ln in res.output.strip().splitlines() if ln.strip()]
    assert res.exit_code == 1, res.output
    assert len(lines) == 1 and lines[0].startswith("error:") and str(path) in lines[0], res.output
    assert "Traceback" not in res.output
    return lines[0]


def test_cli_rollout_and_info_on_a_truncated_model(model_copy, tmp_path):
    from v2w_cli.app import app

    runner = CliRunner()
    halve(model_copy / "model.safetensors")
    np.save(tmp_path / "ctx.npy", np.zeros((1, 32, 32, 3), np.uint8))
    np.save(tmp_path / "acts.npy", np.array([1, 2]))
    res = runner.invoke(app, ["rollout", "--model", str(model_copy), "--context", str(tmp_path / "ctx.npy"),
                              "--actions", str(tmp_path / "acts.npy"), "--out", str(tmp_path / "o"), "--steps", "1", "--quiet"])
    assert "truncated or corrupt" in _one_error_line(res, model_copy / "model.safetensors")
    # `v2w info` reads config.json (only): cut that one
    halve(model_copy / "config.json")
    res = runner.invoke(app, ["info", str(model_copy)])
    assert "truncated or corrupt" in _one_error_line(res, model_copy / "config.json")


# ---------------------------------------------------------------- prepare: videos without actions


def test_prepare_names_the_video_without_its_actions(tmp_path):
    from pipelines.data.prepare import PrepareConfig, list_sources
    from pipelines.data.synthetic import write_videos

    src = write_videos(tmp_path / "src", lengths=(8, 8))
    for npy in src.glob("*.npy"):
        npy.unlink()
    video, npy = re.escape(str(src / "ep00.mp4")), re.escape(str(src / "ep00.npy"))
    expected = rf"{video}: this video has no actions file: expected {npy} .*Add it"
    with pytest.raises(V2WError, match=expected):  # auto-detection: no longer "no known dataset layout"
        list_sources(PrepareConfig(sources=[str(src)], out=str(tmp_path / "data")))
    with pytest.raises(V2WError, match=rf"{video}: this video has no actions file"):
        list_sources(PrepareConfig(sources=[str(src / "ep00.mp4")], out=str(tmp_path / "data")))
    (tmp_path / "empty").mkdir()  # nothing at all: still the generic message
    with pytest.raises(V2WError, match="no known dataset layout"):
        list_sources(PrepareConfig(sources=[str(tmp_path / "empty")], out=str(tmp_path / "data")))
