"""v2w rollout --action-sweep: one context, one row per action; rows, labels, files, noise, errors."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from pipelines.causalize import CausalizeConfig
from pipelines.causalize import run as causalize_run
from pipelines.errors import V2WError
from pipelines.metrics.image import PSNR_CAP_DB
from pipelines.models.checkpoint import ASSETS
from pipelines.models.world_model import load_model
from pipelines.rollout import (
    RolloutJob,
    _per_frame_inputs,
    run_sweep,
    sweep_rows,
    sweep_spread,
)
from pipelines.sampler import Roller, RolloutConfig
from v2w_cli.app import app

SHIPPED = ASSETS / "tiny-world-model"  # 64x64, 18 discrete Boxing actions
runner = CliRunner()


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    root = tmp_path_factory.mktemp("sweep")
    rng = np.random.default_rng(0)
    ctx = np.full((2, 64, 64, 3), (60, 140, 60), np.uint8)  # a green "ring" with two bright blobs
    ctx[:, 20:30, 12:20] = 230
    ctx[1, 36:46, 44:52] = 20
    ctx[0, 34:44, 42:50] = 20
    np.save(root / "ctx64.npy", ctx)
    np.save(root / "ctx32.npy", (rng.random((1, 32, 32, 3)) * 255).astype(np.uint8))
    causalize_run(CausalizeConfig(ckpt="tiny-random", out=str(root / "cont"), action_dim=3, action_type="continuous"))
    model = load_model(root / "cont")
    model.meta["trained"] = {
        "action_type": "continuous",
        "action_stats": {"mean": [0.5, -2.0, 10.0], "std": [0.25, 1.0, 4.0]},
        "action_names": ["x", "y", "gripper"],
    }
    model.save_pretrained(root / "cont-stats")
    return root


def sweep_cli(*args):
    return runner.invoke(app, ["rollout", "--action-sweep", "--steps", "2", "--horizon", "2", *map(str, args)])


def test_discrete_sweep_of_the_shipped_model(env, tmp_path):
    out = tmp_path / "sweep"
    res = sweep_cli("--model", SHIPPED, "--context", env / "ctx64.npy", "--context-frames", "2", "--out", out,
                    "--batch-size", "8", "--json")
    assert res.exit_code == 0, res.output
    info = json.loads(res.stdout)
    assert info["mode"] == "action-sweep" and info["kind"] == "v2w-rollout" and info["format_version"] == 1
    assert info["rows"] == 18 and info["timings"]["chunks"] == 3 and info["action_type"] == "discrete"
    boxing = ["NOOP", "FIRE", "UP", "RIGHT", "LEFT", "DOWN"]  # the shipped model records its data's action names
    assert info["labels"][:6] == boxing and len(info["labels"]) == 18 and info["action_names"] == "trained"
    d = np.load(out / "sweep.npz")
    assert d["frames"].shape == (18, 4, 64, 64, 3) and d["frames"].dtype == np.uint8
    assert np.array_equal(d["frames"][:, :2], np.broadcast_to(np.load(env / "ctx64.npy"), (18, 2, 64, 64, 3)))
    assert d["actions"].shape == (18, 2, 18) and np.array_equal(d["actions"][:, 0], np.eye(18))
    assert np.array_equal(d["actions"][:, 0], d["actions"][:, 1])  # held for every frame
    assert list(d["labels"]) == info["labels"]
    spread = info["spread"]
    assert len(spread["per_horizon_psnr_db"]) == 2 and len(spread["per_row_psnr_db"]) == 18
    assert spread["pairs"] == 18 * 17 // 2 and 0 < spread["psnr_db"] < PSNR_CAP_DB  # the trained model's actions matter
    png = Image.open(out / "sweep.png")
    assert png.height >= 18 * 128 and png.width >= 4 * 128  # 64 px tiles upscaled x2 (>= 96 px)
    from pipelines.data.video import decode_video

    video, _ = decode_video(out / "sweep.mp4")
    assert video.shape[0] == 4 and video.shape[1] % 2 == 0 and video.shape[2] % 2 == 0
    assert video.shape[1] == png.height + png.height % 2  # the grid's rows, padded to even
    res = runner.invoke(app, ["info", str(out)])
    assert res.exit_code == 0 and "action-sweep" in res.output and "sweep.png" in res.output


def test_identical_actions_give_identical_rows_in_and_across_chunks(env, tmp_path):
    job = RolloutJob(model=str(SHIPPED), out=str(tmp_path / "o"), context=str(env / "ctx64.npy"), context_frames=2,
                     horizon=2, batch_size=3, action_sweep=True, sweep_actions=[3, 3, 5, 3])
    info = run_sweep(job, RolloutConfig(steps=2))
    f = np.load(tmp_path / "o" / "sweep.npz")["frames"].astype(int)
    assert info["labels"] == ["RIGHT", "RIGHT", "DOWN", "RIGHT"] and info["timings"]["chunks"] == 2
    # same chunk, same noise, same actions: equal up to one uint8 step (batched CPU kernels need not
    # give bit-identical rows; a value on a rounding boundary can land on either side)
    assert np.abs(f[0] - f[1]).max() <= 1 and (f[0] != f[1]).mean() < 0.01
    assert np.abs(f[0] - f[3]).max() <= 1  # other chunk (batch 1): same noise too; at most float rounding
    assert info["spread"]["per_row_psnr_db"][0] > info["spread"]["per_row_psnr_db"][2]  # row 2 is the odd one out


def test_row_seeds_make_a_rows_noise_independent_of_its_batch(env):
    """Roller.row_seeds: each row draws its noise from its own seed, so the same seed gives the same
    noise whatever else is in the batch (rows then differ only by their inputs)."""
    model = load_model(SHIPPED)
    pixels = torch.from_numpy(np.load(env / "ctx64.npy")[:1]).float().div(127.5).sub(1).permute(3, 0, 1, 2)[None]
    pixels = pixels.expand(3, -1, -1, -1, -1).contiguous()
    with torch.no_grad():
        lat = model.encode_frames(pixels)
    acts = torch.nn.functional.one_hot(torch.tensor([[0, 2, 2], [0, 2, 2], [0, 1, 1]]), 18).float()
    roller = Roller(model, RolloutConfig(steps=2))
    roller.row_seeds = [7, 7, 7]
    shared = roller.rollout(lat, pixels, acts, 2)
    # rows 0 and 1: the same inputs and noise; equal up to float rounding (a CPU's batched kernels need not
    # give bit-identical rows), far below what other actions change (row 2)
    same, other = (shared[0] - shared[1]).abs().max(), (shared[0] - shared[2]).abs().max()
    assert same <= 1e-4 and other > 100 * max(same, 1e-6)
    roller.row_seeds = [7]  # the same seed alone in its batch: the same row
    alone = roller.rollout(lat[2:], pixels[2:], acts[2:], 2)
    assert (alone[0] - shared[2]).abs().max() <= 1e-4  # float rounding of another batch size only
    roller.row_seeds = [1, 2]
    with pytest.raises(V2WError, match="row seeds"):
        roller.rollout(lat, pixels, acts, 2)
    independent = Roller(model, RolloutConfig(steps=2)).rollout(lat, pixels, acts, 2)  # the default: one generator
    assert (independent[0] - independent[1]).abs().max() > 1e-3


def test_action_names(env):
    model = load_model(SHIPPED)
    names = [f"a{i}" for i in range(18)]
    model.meta["trained"].pop("action_names")  # as in a MODEL trained before names were recorded
    assert sweep_rows(model, 2, [0, 17])[0] == ["action 0", "action 17"]
    model.meta["action_names"] = [f"m{i}" for i in range(18)]
    assert sweep_rows(model, 2, [0, 17])[0] == ["m0", "m17"]
    model.meta.setdefault("trained", {})["action_names"] = names
    labels, acts, about = sweep_rows(model, 3, [4, 1])
    assert labels == ["a4", "a1"] and about["names"] == "trained" and acts.shape == (2, 3, 18)
    assert acts[0, :, 4].tolist() == [1, 1, 1] and acts.sum() == 6
    model.meta["trained"]["action_names"] = names[:5]  # the wrong length: not used
    assert sweep_rows(model, 2, [0])[0] == ["m0"]
    with pytest.raises(V2WError, match=r"--sweep-actions must be action ids in \[0, 18\); got \[18\]"):
        sweep_rows(model, 2, [0, 18])


def test_continuous_rows_are_mean_plus_minus_std_in_raw_units(env, tmp_path):
    job = RolloutJob(model=str(env / "cont-stats"), out=str(tmp_path / "c"), context=str(env / "ctx32.npy"),
                     horizon=2, batch_size=4, action_sweep=True)
    info = run_sweep(job, RolloutConfig(steps=2))
    assert info["labels"] == ["x -1σ", "x +1σ", "y -1σ", "y +1σ", "gripper -1σ", "gripper +1σ"]
    assert info["action_units"] == "raw" and info["action_names"] == "trained" and info["rows"] == 6
    d = np.load(tmp_path / "c" / "sweep.npz")
    assert d["frames"].shape == (6, 3, 32, 32, 3) and d["actions"].shape == (6, 2, 3)
    mean, std = np.array([0.5, -2.0, 10.0]), np.array([0.25, 1.0, 4.0])
    for r in range(6):
        want = mean.copy()
        want[r // 2] += (-1, 1)[r % 2] * std[r // 2]
        np.testing.assert_allclose(d["actions"][r], np.broadcast_to(want, (2, 3)), rtol=1e-6)
    model = load_model(env / "cont-stats")  # the model sees 0 with +-1 in the swept dimension
    inputs = _per_frame_inputs(model, torch.from_numpy(d["actions"]), 1)
    np.testing.assert_allclose(inputs[:, 1].numpy(), np.kron(np.eye(3), [[-1], [1]]), atol=1e-5)
    assert Image.open(tmp_path / "c" / "sweep.png").height >= 6 * 96  # 32 px tiles upscaled x3
    # without stats: normalised units, 0 +- 1; subset of dimensions
    plain = load_model(env / "cont")
    labels, acts, about = sweep_rows(plain, 1, [1])
    assert labels == ["action 1 -1σ", "action 1 +1σ"] and about["units"] == "normalised" and about["names"] == "unnamed"
    assert acts[:, 0].tolist() == [[0, -1, 0], [0, 1, 0]]


def test_spread():
    a = np.zeros((2, 3, 4, 4, 3), np.uint8)
    assert sweep_spread(a[:1]) is None
    s = sweep_spread(a)
    assert s["psnr_db"] == PSNR_CAP_DB and s["pairs"] == 1
    b = a.copy()
    b[1, 2] = 255  # the last horizon differs completely: 0 dB there
    s = sweep_spread(b)
    assert s["per_horizon_psnr_db"] == [PSNR_CAP_DB, PSNR_CAP_DB, 0.0]
    assert s["psnr_db"] == pytest.approx(2 * PSNR_CAP_DB / 3)


def test_cli_errors(env, tmp_path):
    ctx = env / "ctx64.npy"
    np.save(tmp_path / "acts.npy", np.array([1, 2]))
    cases = [
        (["--model", SHIPPED, "--context", ctx, "--actions", tmp_path / "acts.npy", "--out", tmp_path / "a"],
         "--action-sweep and --actions are mutually exclusive"),
        (["--model", SHIPPED, "--out", tmp_path / "b"], "--action-sweep needs --context"),
        (["--model", SHIPPED, "--context", ctx, "--sweep-actions", "1,x", "--out", tmp_path / "c"],
         "--sweep-actions must look like 0,3,4"),
        (["--model", SHIPPED, "--context", ctx, "--sweep-actions", "2,18", "--out", tmp_path / "d"],
         r"in [0, 18); got [18]"),
    ]
    for args, msg in cases:
        res = sweep_cli(*args)
        assert res.exit_code == 1 and msg in res.output, res.output
        assert "Traceback" not in res.output
    res = runner.invoke(app, ["rollout", "--model", str(SHIPPED), "--context", str(ctx), "--sweep-actions", "1",
                              "--out", str(tmp_path / "e")])
    assert res.exit_code == 1 and "--sweep-actions needs --action-sweep" in res.output
    assert not any((tmp_path / n).exists() for n in "abcde")
