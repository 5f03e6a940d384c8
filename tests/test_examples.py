"""The paper's recipes (examples/rt1.sh, csgo.sh, recon.sh) and their synthetic stand-in data.

Each recipe runs end to end with ``--smoke`` (synthetic data in the real on-disk format, the tiny
base, 2 train steps, 2 clips of 2 frames) exactly as a user runs it: ``bash examples/X.sh``.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from pipelines.data import synthetic
from pipelines.data.prepare import PrepareConfig, load_manifest, run

ROOT = Path(__file__).resolve().parent.parent
RECIPES = ["rt1", "csgo", "recon"]


def _env() -> dict:
    """This interpreter's bin folder first on PATH, so the scripts find this install's ``v2w``."""
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env.pop("V2W_OUT", None)
    return env


def _recipe(name: str, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["bash", str(ROOT / "examples" / f"{name}.sh"), *args],
        cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=timeout,
    )


# rt1 runs in the default suite; csgo and recon share its stages (only their readers differ, tested in
# tests/data) and cost 30 s each, so they run with -m slow
@pytest.mark.parametrize("name", [RECIPES[0], *(pytest.param(n, marks=pytest.mark.slow) for n in RECIPES[1:])])
def test_recipe_smoke_runs_every_stage(tmp_path, name):
    out = tmp_path / name
    res = _recipe(name, "--smoke", str(out))
    assert res.returncode == 0, f"{name}.sh --smoke failed:\n{res.stdout[-4000:]}\n{res.stderr[-4000:]}"

    for stage in ("prepare", "causalize", "train", "rollout", "eval"):
        assert f"== v2w {stage}" in res.stderr, stage  # every stage ran, and says what it ran
    report = json.loads((out / "report" / "metrics.json").read_text())
    assert report["preset"] == name
    for s in ("model", "copy-last", "shuffled-actions"):
        psnr = report["sets"][s]["psnr"]
        assert isinstance(psnr, float) and math.isfinite(psnr), (s, psnr)
        assert all(math.isfinite(v) for v in report["sets"][s]["psnr_per_horizon"])
    rollout = report["rollout"]
    assert rollout["clips"] == 2 and rollout["horizon"] == 2
    assert rollout["context_frames"] == {"rt1": 1, "csgo": 4, "recon": 4}[name]  # the paper's context
    assert (out / "run" / "final" / "config.json").is_file()


def test_recipe_smoke_refuses_a_foreign_folder(tmp_path):
    (tmp_path / "mine.txt").write_text("keep me")
    res = _recipe("rt1", "--smoke", str(tmp_path), timeout=60)
    assert res.returncode == 1 and "not made by --smoke" in res.stderr
    assert (tmp_path / "mine.txt").read_text() == "keep me"


@pytest.mark.parametrize("name", RECIPES)
def test_recipe_help_and_bad_option(name):
    res = _recipe(name, "--help", timeout=60)
    assert res.returncode == 0 and f"Usage: examples/{name}.sh [--smoke] [OUT]" in res.stdout
    assert "Data (download" in res.stdout and "--smoke" in res.stdout
    res = _recipe(name, "--bogus", timeout=60)
    assert res.returncode == 2 and "unknown option --bogus" in res.stderr


# --- the full-size command lines, checked with a stub `v2w` / `accelerate` ----------------------

_STUB = """#!{python}
import json, os, sys
from pathlib import Path
tool = Path(sys.argv[0]).name
args = sys.argv[1:]
with open(os.environ["STUB_LOG"], "a") as f:
    f.write(json.dumps([tool] + args) + "\\n")
if tool == "accelerate":
    args = args[args.index("v2w_cli") + 1:]
out = Path(args[args.index("--out") + 1]) if "--out" in args else None
stage = args[0]
if stage == "prepare":
    out.mkdir(parents=True)
    (out / "manifest.json").write_text(json.dumps({{"action_dim": int(os.environ["STUB_ADIM"])}}))
elif stage == "causalize":
    out.mkdir(parents=True)
elif stage == "train":
    (out / "checkpoints" / "step-1000").mkdir(parents=True, exist_ok=True)
    (out / "checkpoints" / "step-1000" / "state.json").write_text("{{}}")
    (out / "final").mkdir(exist_ok=True)
elif stage == "rollout":
    out.mkdir(parents=True, exist_ok=True)
    (out / "rollout.json").write_text("{{}}")
elif stage == "eval":
    out.mkdir(parents=True, exist_ok=True)
"""

PAPER = {  # docs/design.md §5, §6: clip length and context frames; the action width and format of each source
    "rt1": {"clip": "16", "context": "1", "adim": 13, "format": "npz"},
    "csgo": {"clip": "16", "context": "4", "adim": 51, "format": "hdf5"},
    "recon": {"clip": "20", "context": "4", "adim": 3, "format": "recon"},
}


def _opt(cmd: list[str], flag: str) -> str:
    return cmd[cmd.index(flag) + 1]


def _stubbed_env(tmp_path: Path, action_dim: int) -> tuple[dict, Path]:
    """An environment whose ``v2w`` and ``accelerate`` are the logging stub: (env, the stub's log file)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool in ("v2w", "accelerate"):
        (bin_dir / tool).write_text(_STUB.format(python=sys.executable))
        (bin_dir / tool).chmod(0o755)
    log = tmp_path / "log.jsonl"
    env = _env()
    env.update(PATH=f"{bin_dir}{os.pathsep}{env['PATH']}", STUB_LOG=str(log), STUB_ADIM=str(action_dim), RAW=str(tmp_path / "raw"))
    return env, log


@pytest.mark.parametrize("name", RECIPES)
def test_recipe_full_settings(tmp_path, name):
    """Without --smoke each recipe runs the paper's settings; a re-run skips finished stages and resumes training."""
    env, log = _stubbed_env(tmp_path, PAPER[name]["adim"])
    env["WEIGHTS"] = str(tmp_path / "weights")
    out = tmp_path / "out"
    script = str(ROOT / "examples" / f"{name}.sh")

    res = subprocess.run(["bash", script, str(out)], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    cmds = [json.loads(line) for line in log.read_text().splitlines()]
    assert [c[0] if c[0] == "accelerate" else c[1] for c in cmds] == ["prepare", "causalize", "accelerate", "rollout", "eval"]
    prepare, causalize, train, rollout, evaluate = cmds
    paper = PAPER[name]
    assert prepare[2] == str(tmp_path / "raw") and _opt(prepare, "--format") == paper["format"]
    assert _opt(prepare, "--size") == "320x512" and _opt(prepare, "--clip-len") == paper["clip"]
    assert _opt(causalize, "--ckpt") == "dynamicrafter" and _opt(causalize, "--transfer") == "extrapolative"
    assert _opt(causalize, "--action-dim") == str(paper["adim"])
    assert ("--action-type" in causalize) == (name == "csgo")
    assert train[:6] == ["accelerate", "launch", "--multi_gpu", "--num_processes", "4", "-m"]
    assert train[6:8] == ["v2w_cli", "train"] and "--resume" not in train
    effective_batch = 4 * int(_opt(train, "--batch-size")) * int(_opt(train, "--grad-accum"))
    assert effective_batch == 16 and _opt(train, "--lr") == "1e-5" and _opt(train, "--steps") == "100000"
    assert _opt(train, "--precision") == "bf16" and "--gradient-checkpointing" in train
    assert _opt(rollout, "--model") == str(out / "run" / "final") and _opt(rollout, "--context-frames") == paper["context"]
    assert _opt(rollout, "--guidance") == "2.5" and _opt(rollout, "--steps") == "50" and "--shuffle-actions" in rollout
    assert _opt(evaluate, "--preset") == name and _opt(evaluate, "--baseline") == "copy-last"
    assert _opt(evaluate, "--weights") == str(tmp_path / "weights")

    log.unlink()  # again: prepare, causalize and rollout are done; training resumes
    res = subprocess.run(["bash", script, str(out)], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    cmds = [json.loads(line) for line in log.read_text().splitlines()]
    assert [c[0] for c in cmds] == ["accelerate", "v2w"] and cmds[1][1] == "eval"
    assert cmds[0][-1] == "--resume" and res.stderr.count("skip: ") == 3

    log.unlink()  # one process: plain `v2w train`
    res = subprocess.run(["bash", script, str(tmp_path / "one")], cwd=ROOT, env=dict(env, GPUS="1"), capture_output=True,
                         text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    train = [json.loads(line) for line in log.read_text().splitlines()][2]
    assert train[:2] == ["v2w", "train"] and "--resume" not in train


# --- the synthetic stand-ins -----------------------------------------------------------------------


def _cli(fmt: str, out: Path, *args: str) -> Path:
    res = subprocess.run([sys.executable, "-m", "pipelines.data.synthetic", fmt, str(out), *args],
                         cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    return Path(res.stdout.strip())


def test_synthetic_rt1_layout_and_prepare(tmp_path):
    root = _cli("rt1", tmp_path / "raw", "--episodes", "3", "--frames", "8", "--size", "16x20")
    assert root == tmp_path / "raw" / "fractal20220817_data"
    files = sorted(p.name for p in root.iterdir())
    assert files == [f"train_eps_{i:08d}.npz" for i in range(3)]
    with np.load(root / files[0]) as f:
        assert sorted(f.files) == ["action", "image"]
        assert f["image"].shape == (8, 16, 20, 3) and f["image"].dtype == np.uint8
        assert f["action"].shape == (8, synthetic.RT1_ACTION_DIM) and f["action"].dtype == np.float32
        terminate = f["action"][:, 7:10]  # base 2 + rotation 1 + gripper 1 + rotation_delta 3
        assert (terminate[:-1] == [0, 1, 0]).all() and (terminate[-1] == [1, 0, 0]).all()
    m = run(PrepareConfig(sources=[str(tmp_path / "raw")], out=str(tmp_path / "data"), clip_len=4, val_fraction=0.34,
                          store="npy")).manifest
    assert m["made_from"]["sources"][0]["format"] == "npz"
    assert m["action_dim"] == 13 and m["resolution"] == [16, 20]


def test_synthetic_csgo_layout_and_prepare(tmp_path):
    import h5py

    _cli("csgo", tmp_path / "raw", "--episodes", "3", "--frames", "6")
    files = sorted(p.relative_to(tmp_path / "raw").as_posix() for p in (tmp_path / "raw").rglob("*.hdf5"))
    assert files == [f"1-200/hdf5_dm_july2021_{k}.hdf5" for k in (1, 2, 3)]
    with h5py.File(tmp_path / "raw" / files[0], "r") as f:
        assert sorted(f.keys())[:4] == ["frame_0_helperarr", "frame_0_x", "frame_0_xaux", "frame_0_y"]
        assert f["frame_0_x"].shape == (30, 56, 3) and f["frame_0_x"].dtype == np.uint8
        y = f["frame_5_y"][()]
        assert y.shape == (51,) and y[13:36].sum() == 1 and y[36:].sum() == 1  # one mouse bin per axis
    run(PrepareConfig(sources=[str(tmp_path / "raw")], out=str(tmp_path / "data"), clip_len=3, val_fraction=0.34,
                      store="npy"))
    m = load_manifest(tmp_path / "data")
    assert m["made_from"]["sources"][0]["format"] == "hdf5"
    assert m["action_dim"] == 51 and m["action_type"] == "discrete" and m["fps"] == 16.0
    assert m["action_names"][:2] == ["key_w", "key_a"]


def test_synthetic_recon_layout_and_prepare(tmp_path):
    _cli("recon", tmp_path / "raw", "--episodes", "3", "--frames", "6")
    trajs = sorted(p.name for p in (tmp_path / "raw").iterdir())
    assert trajs == [f"jackal_2019-01-01-00-00-00_{e}_r00" for e in range(3)]
    names = sorted(p.name for p in (tmp_path / "raw" / trajs[0]).iterdir())
    assert names == sorted([f"{i}.jpg" for i in range(6)] + ["traj_data.pkl"])
    run(PrepareConfig(sources=[str(tmp_path / "raw")], out=str(tmp_path / "data"), clip_len=3, val_fraction=0.34,
                      store="npy"))
    m = load_manifest(tmp_path / "data")
    assert m["made_from"]["sources"][0]["format"] == "recon"
    assert m["action_dim"] == 3 and m["action_names"] == ["dx", "dy", "dyaw"] and m["fps"] == 4.0
    assert 0.3 <= m["action_stats"]["mean"][0] <= 0.6  # forward speed per frame of the synthetic drive


def test_synthetic_cli_rejects_bad_size(tmp_path):
    res = subprocess.run([sys.executable, "-m", "pipelines.data.synthetic", "rt1", str(tmp_path), "--size", "big"],
                         cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert res.returncode == 2 and "--size must look like" in res.stderr


@pytest.mark.slow  # 150 s on 2 cores: the whole shipped-model recipe; its stages are tested one by one in the default suite
def test_tiny_world_model_recipe_smoke_and_ship(tmp_path):
    """The shipped model's recipe end to end at toy sizes; a re-run skips every finished stage; and
    `python -m pipelines.ship` turns its output into the two shipped folders."""
    out = tmp_path / "tw"
    env = {**_env(), "OMP_NUM_THREADS": "1"}
    cmd = ["bash", str(ROOT / "examples" / "tiny_world_model.sh"), str(out), "--smoke"]
    res = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    for name in ("run", "run-scratch"):
        report = json.loads((out / f"report-{name}" / "metrics.json").read_text())
        assert math.isfinite(report["sets"]["model"]["psnr"]) and report["action_following"] is not None
    assert json.loads((out / "model-scratch" / "config.json").read_text())["causalize"]["from_scratch"] is True
    again = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert again.returncode == 0 and again.stdout.count("skip:") >= 4, again.stdout
    from pipelines.models.world_model import load_model
    from pipelines.ship import ship

    res = ship(out, tmp_path / "assets")
    assert (tmp_path / "assets" / "tiny-base" / "model.ckpt").is_file()
    assert "copy-last" in res["summary_md"] and res["settings"]["ARCH"] == "tiny"
    model = load_model(tmp_path / "assets" / "tiny-world-model")
    assert model.unet.config.action_dim == 18 and next(model.unet.parameters()).dtype.is_floating_point


def test_wan_recipe_smoke_runs_every_stage(tmp_path):
    """examples/wan_rt1.sh --smoke: the Wan family through all five stages on RT-1's layout."""
    out = tmp_path / "wan"
    res = _recipe("wan_rt1", "--smoke", str(out))
    assert res.returncode == 0, f"wan_rt1.sh --smoke failed:\n{res.stdout[-4000:]}\n{res.stderr[-4000:]}"
    for stage in ("prepare", "causalize", "train", "rollout", "eval"):
        assert f"== v2w {stage}" in res.stderr, stage
    assert "--family wan" in res.stderr and "tiny-wan" in res.stderr
    report = json.loads((out / "report" / "metrics.json").read_text())
    assert report["rollout"]["horizon"] == 8 and report["rollout"]["context_frames"] == 1
    for s in ("model", "copy-last", "shuffled-actions"):
        assert len(report["sets"][s]["psnr_per_horizon"]) == 8 and math.isfinite(report["sets"][s]["psnr"])
    assert json.loads((out / "run" / "final" / "config.json").read_text())["family"] == "wan"


def test_wan_recipe_full_settings(tmp_path):
    """Without --smoke: the 1.3B from the HF cache, 17-frame clips at 320x512, bf16 rollouts, 4 processes."""
    env, log = _stubbed_env(tmp_path, 13)
    res = subprocess.run(["bash", str(ROOT / "examples" / "wan_rt1.sh"), str(tmp_path / "out")], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    prepare, causalize, train, rollout, evaluate = [json.loads(line) for line in log.read_text().splitlines()]
    assert _opt(prepare, "--size") == "320x512" and _opt(prepare, "--clip-len") == "17"
    assert _opt(causalize, "--family") == "wan" and _opt(causalize, "--ckpt") == "Wan-AI/Wan2.1-T2V-1.3B-Diffusers"
    assert _opt(causalize, "--action-dim") == "13"
    assert train[:5] == ["accelerate", "launch", "--multi_gpu", "--num_processes", "4"] and _opt(train, "--precision") == "bf16"
    assert _opt(rollout, "--precision") == "bf16" and _opt(rollout, "--steps") == "50" and _opt(evaluate, "--preset") == "rt1"


@pytest.mark.slow  # ~60 s: five arms, each causalized, trained, rolled out and scored
def test_transfer_study_smoke_prints_one_row_per_arm(tmp_path):
    """examples/transfer_study.sh --smoke on real Boxing clips with emulator branches: every arm gets
    its row, and a re-run skips every finished arm."""
    from pipelines.data.sample import make_atari_episodes

    make_atari_episodes(tmp_path / "raw", game="boxing", episodes=2, frames=24, seed=1)
    make_atari_episodes(tmp_path / "raw-test", game="boxing", episodes=1, frames=24, seed=1000, branches=1, clip_len=8)
    common = dict(size=(32, 32), resize="stretch", clip_len=8, num_actions=18, store="npy")
    run(PrepareConfig(sources=[str(tmp_path / "raw")], out=str(tmp_path / "train"), stride=4, val_fraction=0.0, **common))
    run(PrepareConfig(sources=[str(tmp_path / "raw-test")], out=str(tmp_path / "test"), stride=8, val_fraction=0.0, **common))
    cmd = ["bash", str(ROOT / "examples" / "transfer_study.sh"), "tiny", str(tmp_path / "train"), str(tmp_path / "test"),
           str(tmp_path / "out"), "--smoke"]
    env = {**_env(), "OMP_NUM_THREADS": "1"}
    res = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    table = (tmp_path / "out" / "table.md").read_text()
    for row in ("base (extrapolative)", "from scratch", "base, shift transfer", "base, masked transfer", "old base (tiny)", "copy-last"):
        assert f"| {row} |" in table
    assert "+" in table.split("| base (extrapolative) |")[1].splitlines()[0]  # true - shuffled gap computed
    reports = sorted((tmp_path / "out").glob("*/report/metrics.json"))
    stamps = [p.stat().st_mtime_ns for p in reports]
    again = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert again.returncode == 0 and len(reports) == 5 and [p.stat().st_mtime_ns for p in reports] == stamps
