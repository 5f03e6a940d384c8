"""Counterfactual branches: emulator replay, recording, prepare's splits, rollout and eval on them."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from pipelines.data import sample
from pipelines.data.episode import EpisodeRef
from pipelines.data.prepare import PrepareConfig, split_episodes
from pipelines.data.prepare import run as prepare_run
from pipelines.data.sample import make_atari_episodes
from pipelines.data.shards import clip_key, decode_sample, iter_shard
from pipelines.data.video import decode_video, psnr_uint8
from pipelines.errors import V2WError
from pipelines.evaluate import EvalConfig
from pipelines.evaluate import run as eval_run
from pipelines.rollout import derangement

T, C = 8, 2


def read_all(data: Path) -> dict[str, dict]:
    m = json.loads((data / "manifest.json").read_text())
    return {s["key"]: s for split in m["splits"].values() for sh in split["shards"]
            for s in map(decode_sample, iter_shard(data / sh["name"]))}


# ---------------------------------------------------------------- the emulator


@pytest.mark.parametrize("game", ["boxing", "pong"])
def test_branch_with_the_logged_actions_replays_the_logged_frames_bit_for_bit(game):
    ale, action_set = sample._open_ale(game, seed=3, full_action_space=False)
    starts = sample.clip_starts(24, T)
    snaps = [s + C - 1 for s in starts]
    obs, ids, states = sample.play_episode(ale, action_set, np.random.default_rng(3), 24, 4, snaps)
    assert len(obs) == 24 and len(ids) == 23 and sorted(states) == [s + C - 1 for s in starts]
    for s in starts:
        replay = sample.play_branch(ale, states[s + C - 1], action_set, ids[s + C - 1 : s + T - 1], 4)
        assert len(replay) == T - C
        assert all(np.array_equal(a, b) for a, b in zip(replay, obs[s + C : s + T]))  # restore is exact


def test_alternatives_are_distinct_holds_then_random():
    names = ["NOOP", "FIRE", "UP", "RIGHT", "LEFT", "DOWN"]
    for seed in range(20):
        logged = [2, 2, 5, 5, 5, 1]  # UP at the branch point
        alts = sample.alternatives(names, logged, 4, np.random.default_rng(seed))
        labels = [a[0] for a in alts]
        assert len(alts) == 4 and labels[-1] == "random"
        holds = [a[1] for a in alts[:-1]]
        assert len({h[0] for h in holds}) == 3 and all(len(set(h)) == 1 and len(h) == 6 for h in holds)
        assert all(h[0] in (3, 4, 5) for h in holds)  # the other moves, never UP (the logged action)
        assert alts[-1][1] != logged and alts[-1][1] not in holds and len(alts[-1][1]) == 6
    freeway = sample.alternatives(["NOOP", "UP", "DOWN"], [1] * 6, 5, np.random.default_rng(0))
    assert [a[0] for a in freeway] == ["hold DOWN", "hold NOOP", "hold UP", "random"]  # logged UP only when needed


class _FakeALE:
    """Dies in the branch restored from state 'doomed' after two steps; else a grey screen per step."""

    def restoreState(self, st):
        self.st, self.n = st, 0

    def act(self, a):
        self.n += 1

    def game_over(self):
        return self.st == "doomed" and self.n >= 8

    def getScreenRGB(self):
        return np.full((4, 4, 3), self.n, np.uint8)


def test_a_branch_in_which_the_game_ends_is_dropped():
    obs = [np.zeros((4, 4, 3), np.uint8)] * 16
    states = {1: "doomed", 9: "fine"}
    out = sample.record_branches(_FakeALE(), ["NOOP", "UP", "DOWN"], obs, [0] * 15, states, T, C, 2, 4,
                                 np.random.default_rng(0))
    assert {b["start"] for b in out} == {8} and len(out) == 2
    assert all(b["frames"].shape == (T, 4, 4, 3) and b["ids"].shape == (T - 1,) for b in out)


def test_recording_layout_is_deterministic_and_leaves_factual_episodes_alone(tmp_path):
    kw = dict(game="boxing", episodes=2, frames=20, seed=5, branches=3, clip_len=T, branch_context=C)
    a, b = make_atari_episodes(tmp_path / "a", **kw), make_atari_episodes(tmp_path / "b", **kw)
    plain = make_atari_episodes(tmp_path / "plain", **{**kw, "branches": 0})
    files = sorted(p.name for p in a.iterdir())
    assert files == sorted(p.name for p in b.iterdir())
    assert all((a / f).read_bytes() == (b / f).read_bytes() for f in files)  # same seed -> identical files
    for f in sorted(p.name for p in plain.iterdir()):
        assert (plain / f).read_bytes() == (a / f).read_bytes()  # recording branches changes no factual byte
    assert not (plain / "branches.json").exists()

    table = json.loads((a / "branches.json").read_text())
    assert table["clip_len"] == T and table["shared_frames"] == C and table["frame_skip"] == 4
    names = json.loads((a / "actions.json").read_text())["actions"]
    stems = {p.stem for p in a.glob("*__s*_b*.mp4")}
    assert stems == set(table["branches"]) and len(stems) == 2 * 2 * 3  # 2 episodes x 2 clips (20 frames) x K
    for stem, br in table["branches"].items():
        assert stem == f"{br['parent']}__s{br['start']:05d}_b{stem[-1]}"
        parent_ids, ids = np.load(a / f"{br['parent']}.npy"), np.load(a / f"{stem}.npy")
        s = br["start"]
        assert ids.shape == (T - 1,) and np.array_equal(ids[: C - 1], parent_ids[s : s + C - 1])
        if br["label"].startswith("hold"):
            assert br["label"] == f"hold {names[ids[C - 1]]}" and len(set(ids[C - 1 :])) == 1
            assert ids[C - 1] != parent_ids[s + C - 1]  # boxing has moves enough to avoid the logged action
        frames, _ = decode_video(a / f"{stem}.mp4")
        parent, _ = decode_video(a / f"{br['parent']}.mp4")
        assert frames.shape[0] == T and psnr_uint8(frames[:C], parent[s : s + C]) > 40  # shared frames (mp4 both)
    assert [table["branches"][f"episode_000__s00000_b{k}"]["label"] for k in range(3)][-1] == "random"


def test_emulator_gap_numbers():
    gap = sample.emulator_gap("boxing", episodes=1, frames=24, branches=3, seed=0)
    assert gap["all"]["n"] == 9 and gap["hold"]["n"] == 6 and gap["random"]["n"] == 3
    assert len(gap["all"]["psnr_per_horizon"]) == T - C
    assert gap["all"]["pooled_psnr_per_horizon"][-1] < gap["all"]["pooled_psnr_per_horizon"][0] < 100  # drifts apart
    assert "| boxing | hold |" in sample.gap_table([gap])


# ---------------------------------------------------------------- prepare


def _ref(eid, parent=None, start=0):
    b = {"parent": parent, "start": start, "shared_frames": C, "clip_len": T, "label": "hold UP", "fps": 15.0,
         "file": "branches.json"} if parent else None
    return EpisodeRef("videos", f"{eid}.mp4", eid, branch=b)


def test_split_never_separates_a_branch_from_its_parent():
    parents = [_ref(f"episode_{i:03d}") for i in range(9)]
    branches = [_ref(f"episode_{i:03d}__s{s:05d}_b{k}", f"episode_{i:03d}", s)
                for i in range(9) for s in (0, 8) for k in range(2)]
    for seed in range(10):
        for frac in (0.1, 0.3, 0.5):
            sp = split_episodes(branches + parents, frac, seed)
            where = {r.episode_id: name for name, rs in sp.items() for r in rs}
            assert all(where[b.episode_id] == where[b.branch["parent"]] for b in branches)
            # branches do not change the split of the episodes themselves
            alone = split_episodes(parents, frac, seed)["val"]
            assert [r.episode_id for r in sp["val"] if r.branch is None] == [r.episode_id for r in alone]
            for rs in sp.values():  # each branch right after its parent (or a sibling)
                for prev, r in zip(rs, rs[1:]):
                    if r.branch:
                        assert r.branch["parent"] in (prev.episode_id, (prev.branch or {}).get("parent"))


@pytest.fixture(scope="module")
def branch_raw(tmp_path_factory):
    root = tmp_path_factory.mktemp("branches")
    return make_atari_episodes(root / "raw", game="boxing", episodes=4, frames=16, seed=1, branches=2, clip_len=T,
                               branch_context=C)


def _prepare(raw, out, **kw):
    kw = {"size": (32, 32), "resize": "stretch", "clip_len": T, "num_actions": 18, "val_fraction": 0.5,
          "store": "npy", **kw}
    return prepare_run(PrepareConfig(sources=[str(raw)], out=str(out), **kw)).manifest


def test_prepare_links_branch_clips_to_parent_clips_in_the_same_split(branch_raw, tmp_path):
    m = _prepare(branch_raw, tmp_path / "data")
    clips = read_all(tmp_path / "data")
    factual = {k: c for k, c in clips.items() if "branch_of" not in c["meta"]}
    branch = {k: c for k, c in clips.items() if "branch_of" in c["meta"]}
    assert len(factual) == 8 and len(branch) == 16  # 4 episodes x 2 clips, x 2 branches each
    assert m["splits"]["train"]["episodes"] + m["splits"]["val"]["episodes"] == 4
    assert m["branches"] == {"count": {"train": 8, "val": 8}, "shared_frames": C}
    assert all("__" not in e for e in m["val_episodes"])
    table = json.loads((branch_raw / "branches.json").read_text())["branches"]
    for k, c in branch.items():
        meta = c["meta"]
        stem = meta["episode_id"]
        parent = factual[meta["branch_of"]]
        assert meta["branch_of"] == clip_key(table[stem]["parent"], table[stem]["start"])
        assert meta["split"] == parent["meta"]["split"]  # never straddles train / val
        assert meta["branch"] == table[stem]["label"] and meta["shared_frames"] == C
        assert psnr_uint8(c["frames"][:C], parent["frames"][:C]) > 35  # the shared frames (two mp4 sources)
        assert np.array_equal(c["actions"][: C - 1], parent["actions"][: C - 1])
        assert not np.array_equal(c["actions"][C - 1 : T - 1], parent["actions"][C - 1 : T - 1])
    with pytest.raises(V2WError, match=r"branches\.json.*--clip-len 8"):
        _prepare(branch_raw, tmp_path / "d2", clip_len=6)
    with pytest.raises(V2WError, match=r"branches\.json.*drop --fps"):
        _prepare(branch_raw, tmp_path / "d3", fps=5.0, action_kind="discrete")


def test_prepare_names_a_missing_parent(branch_raw, tmp_path):
    raw = tmp_path / "raw"
    raw.mkdir()
    for f in branch_raw.iterdir():
        if not f.name.startswith("episode_000."):
            (raw / f.name).write_bytes(f.read_bytes())
    with pytest.raises(V2WError, match=r"branches\.json: branch episode_000__s00000_b0\.mp4 names parent 'episode_000"):
        _prepare(raw, tmp_path / "data")


# ---------------------------------------------------------------- rollout


@pytest.mark.parametrize("n", [2, 3, 7, 40, 101])
def test_derangement_has_no_fixed_points(n):
    for seed in range(50):
        p = derangement(n, seed)
        assert sorted(p.tolist()) == list(range(n)) and not (p == np.arange(n)).any()
    assert np.array_equal(derangement(n, 0), derangement(n, 0))


def test_derangement_terminates_where_the_old_loop_hung():
    # the old retry seeded every redraw with perm.sum() + n, the same for every permutation
    p = derangement(40, 0)
    assert not (p == np.arange(40)).any()
    with pytest.raises(V2WError, match="at least 2"):
        derangement(1, 0)


@pytest.fixture(scope="module")
def cf_env(tmp_path_factory, branch_raw):
    import torch

    from pipelines.causalize import CausalizeConfig
    from pipelines.causalize import run as causalize_run
    from pipelines.models.world_model import load_model

    root = tmp_path_factory.mktemp("cf")
    causalize_run(CausalizeConfig(ckpt="tiny-random", out=str(root / "fresh"), action_dim=18, action_type="discrete"))
    model = load_model(root / "fresh")
    torch.manual_seed(0)
    model.unet.action_encoder.embedding.data.normal_(0, 5.0)  # make actions matter
    model.save_pretrained(root / "model")
    _prepare(branch_raw, root / "data")
    return root


def test_batch_rollout_writes_counterfactuals_from_the_parent_context(cf_env, tmp_path):
    from pipelines.rollout import RolloutJob, run_batch
    from pipelines.sampler import RolloutConfig

    data = read_all(cf_env / "data")
    job = RolloutJob(model=str(cf_env / "model"), out=str(tmp_path / "pred"), data=str(cf_env / "data"), limit=2,
                     shuffle_actions=True, context_frames=2, horizon=3, batch_size=4)
    info = run_batch(job, RolloutConfig(steps=2))
    clips = sorted(p.stem for p in (tmp_path / "pred" / "clips").glob("*.npz"))
    assert len(clips) == 2 == info["clips"] and all("branch_of" not in data[k]["meta"] for k in clips)
    cfs = sorted((tmp_path / "pred" / "counterfactual").glob("*.npz"))
    expect = sorted(k for k, c in data.items() if c["meta"].get("branch_of") in clips and c["meta"]["split"] == "val")
    assert [p.stem for p in cfs] == expect and len(expect) == 4 == info["counterfactual"]
    for p in cfs:
        d = np.load(p, allow_pickle=False)
        b, parent = data[p.stem], data[str(d["parent"])]
        assert np.array_equal(d["context"], parent["frames"][:2])  # the parent's context, exactly
        assert np.array_equal(d["ref"], b["frames"][2:5]) and np.array_equal(d["actions"], b["actions"])
        assert str(d["label"]) == b["meta"]["branch"] and d["pred"].shape == (3, 32, 32, 3)
    assert json.loads((tmp_path / "pred" / "rollout.json").read_text())["counterfactual"] == 4
    assert len(list((tmp_path / "pred" / "shuffled").glob("*.npz"))) == 2

    rep = eval_run(EvalConfig(pred=str(tmp_path / "pred"), out=str(tmp_path / "rep"), metrics=("psnr",)))
    cf = rep["counterfactual"]
    assert cf["n_branches"] == 4 and cf["n_parents"] == 2 and len(cf["gain"]["psnr_per_horizon"]) == 3
    assert "Counterfactual actions" in (tmp_path / "rep" / "metrics.md").read_text()

    # a model that ignores actions (zero-initialised action layers): with per-clip noise seeds its
    # counterfactual rollout is its factual one, whatever the batch layout, up to float rounding (a
    # batch of another size may sum in another order on 2+ threads: at most 1 level in a rare pixel)
    job = RolloutJob(model=str(cf_env / "fresh"), out=str(tmp_path / "pred0"), data=str(cf_env / "data"), limit=2,
                     context_frames=2, horizon=3, batch_size=3)
    run_batch(job, RolloutConfig(steps=2))
    for p in sorted((tmp_path / "pred0" / "counterfactual").glob("*.npz")):
        d = np.load(p, allow_pickle=False)
        factual = np.load(tmp_path / "pred0" / "clips" / f"{d['parent']}.npz")
        diff = np.abs(d["pred"].astype(np.int16) - factual["pred"].astype(np.int16))
        assert diff.max() <= 1 and (diff > 0).mean() < 1e-3
    rep0 = eval_run(EvalConfig(pred=str(tmp_path / "pred0"), out=str(tmp_path / "rep0"), metrics=("psnr",)))
    assert abs(rep0["counterfactual"]["gain"]["psnr"]) < 0.01

    with pytest.raises(V2WError, match="--context-frames 3 > the 2 frames branch clips share"):
        run_batch(RolloutJob(model=str(cf_env / "model"), out=str(tmp_path / "p3"), data=str(cf_env / "data"),
                             limit=1, context_frames=3), RolloutConfig(steps=1))
    with pytest.raises(V2WError, match="--shuffle-actions needs at least 2 clips"):
        run_batch(RolloutJob(model=str(cf_env / "model"), out=str(tmp_path / "p1"), data=str(cf_env / "data"),
                             limit=1, context_frames=2, shuffle_actions=True), RolloutConfig(steps=1))


# ---------------------------------------------------------------- eval, by hand


def _frames(*values):
    """One 16x16 frame per value, every pixel that value: PSNR against zeros is 20 log10(255 / v)."""
    return np.stack([np.full((16, 16, 3), v, np.uint8) for v in values])


def db(v):
    return 100.0 if v == 0 else 10 * np.log10(255.0**2 / v**2)  # MSE = v^2 against a zero frame


def test_counterfactual_metrics_by_hand(tmp_path):
    pred = tmp_path / "pred"
    (pred / "clips").mkdir(parents=True)
    (pred / "counterfactual").mkdir()
    zero = _frames(0, 0)
    # parent clips: factual prediction and the true factual future (the alternative futures are all zeros)
    np.savez(pred / "clips" / "p0.npz", context=_frames(7, 60), pred=_frames(30, 40), ref=_frames(0, 50))
    np.savez(pred / "clips" / "p1.npz", context=_frames(7, 80), pred=_frames(10, 10), ref=_frames(5, 25))
    cf = {"b0": ("p0", "hold UP", _frames(10, 20), 60), "b1": ("p0", "random", _frames(20, 20), 60),
          "b2": ("p1", "hold UP", _frames(10, 5), 80), "orphan": ("p9", "hold UP", _frames(1, 1), 1)}
    for k, (parent, label, p, last) in cf.items():
        np.savez(pred / "counterfactual" / f"{k}.npz", context=_frames(7, last), pred=p, ref=zero,
                 actions=np.zeros((4, 18)), parent=np.array(parent), label=np.array(label))
    rep = eval_run(EvalConfig(pred=str(pred), out=str(tmp_path / "rep"), metrics=("ssim",), baseline=None))
    c = rep["counterfactual"]
    assert c["n_branches"] == 3 and c["n_parents"] == 2 and c["missing_parent"] == ["orphan"]

    def check(res, h1, h2):
        assert res["psnr_per_horizon"] == pytest.approx([np.mean(h1), np.mean(h2)])
        assert res["psnr"] == pytest.approx(np.mean(h1 + h2))

    model = ([db(10), db(20), db(10)], [db(20), db(20), db(5)])  # b0, b1, b2 per horizon
    factual = ([db(30), db(30), db(10)], [db(40), db(40), db(10)])  # the parents' predictions, p0 p0 p1
    check(c["model"], *model)
    check(c["factual_pred_vs_alt_ref"], *factual)
    check(c["copy-last"], [db(60), db(60), db(80)], [db(60), db(60), db(80)])
    check(c["emulator_gap"], [db(0), db(0), db(5)], [db(50), db(50), db(25)])  # identical frames: 100 dB
    gain = [np.mean(m) - np.mean(f) for m, f in zip(model, factual)]
    assert c["gain"]["psnr_per_horizon"] == pytest.approx(gain)
    assert c["gain"]["psnr"] == pytest.approx(np.mean(model) - np.mean(factual))
    # hand values: 20 log10(255/10) - 20 log10(255/30) = 20 log10(3) = 9.54 dB for b0 at h1
    assert c["gain"]["psnr_per_clip"][0] == pytest.approx((20 * np.log10(3) + 20 * np.log10(2)) / 2)
    up = c["by_label"]["hold UP"]
    assert up["n"] == 2 and up["model"]["psnr_per_horizon"] == pytest.approx([db(10), (db(20) + db(5)) / 2])
    up_gain = [(db(10) - db(30) + 0) / 2, (db(20) - db(40) + db(5) - db(10)) / 2]  # b0 and b2
    assert up["gain"]["psnr_per_horizon"] == pytest.approx(up_gain)
    assert c["by_label"]["random"]["gain"]["psnr"] == pytest.approx(((db(20) - db(30)) + (db(20) - db(40))) / 2)
    assert "ssim_per_horizon" in c["model"]  # the requested metrics come along; PSNR always
    md = (tmp_path / "rep" / "metrics.md").read_text()
    assert "## Counterfactual actions" in md and "| PSNR gain (model - factual pred) |" in md and "hold UP (n=2)" in md
    from typer.testing import CliRunner

    from v2w_cli.app import app

    res = CliRunner().invoke(app, ["eval", "--pred", str(pred), "--out", str(tmp_path / "r2"), "--metrics", "psnr",
                                   "--baseline", "none"])
    assert res.exit_code == 0, res.output
    assert f"gain {np.mean(model) - np.mean(factual):+.2f} dB" in " ".join(res.output.split())
