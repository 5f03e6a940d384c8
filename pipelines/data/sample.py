"""A small real interactive dataset, generated on the spot: Atari games played by a random policy.

ale-py ships the game ROMs, so this needs no download. The policy holds each action for a few
steps (1-6) so that its effect (a paddle moving) is visible over several frames. Output is the
``videos`` source layout: ``episode_NNN.mp4`` (full 210x160 frames) + ``episode_NNN.npy``
(integer action ids, row t = the action taken after frame t) + ``actions.json`` (id -> name).

Counterfactual branches (``branches=K``): the emulator replays bit-exactly from a cloned state, so
for every clip of ``clip_len`` T frames at s = 0, T, 2T, ... (prepare's default clips) the state
right after frame s+C-1 (C = ``branch_context``) is cloned and K alternative action sequences are
played from it for T-C steps: K-1 *held* actions (distinct, unlike the logged action at the branch
point where the action set allows, moves first) and one random sequence in the policy's style.
Each branch is written as an extra episode ``episode_NNN__s{s:05d}_b{k}.mp4/.npy`` of exactly T
frames (the factual frames [s, s+C), then its own T-C) and T-1 action ids (the logged ones for
rows s..s+C-2, then the alternative's), listed with its parent, start and label in
``branches.json``. A branch in which the game ends is dropped. The factual episodes are the same
bytes with or without branches (the branch choices draw from their own generator).

The emulator's own gap (``emulator_gap``, ``--gap``): PSNR per horizon between the factual frames
and the alternatives' at 64x64 (stretch), i.e. how far an action change moves the picture, the
ceiling of any action effect a model can show. Measured with frame-skip 4, T=8, C=2, K=4 (3 holds
+ random), 4 episodes x 192 frames, seed 0 (``--gap --episodes 4 --frames 192``); h1..h6 and mean
are the PSNR of the mean MSE over all alternatives; "capped" averages per-pair PSNR with identical
frames at 100 dB (as ``v2w eval`` does); "same" is the share of identical frame pairs:

==============  ====  ====  ====  ====  ====  ====  ====  ======  ====
game            h1    h2    h3    h4    h5    h6    mean  capped  same
==============  ====  ====  ====  ====  ====  ====  ====  ======  ====
boxing          32.6  28.6  26.9  25.8  25.2  24.6  26.6  35.9    12%
pong            43.3  39.1  38.6  38.6  38.7  38.6  39.2  59.3    34%
freeway         45.9  44.4  43.9  43.6  43.4  43.3  44.0  65.8    41%
breakout        37.3  35.8  35.5  35.1  35.1  35.2  35.6  57.8    35%
enduro          37.9  34.1  32.1  30.8  29.9  29.3  31.5  40.4    11%
riverraid       43.8  39.6  37.0  35.1  33.4  32.4  35.5  74.7    61%
battle_zone     33.1  31.7  30.4  29.9  29.7  29.5  30.5  45.2    21%
beam_rider      33.7  32.3  31.8  31.2  27.4  28.8  30.3  62.8    46%
space_invaders  51.9  45.0  43.3  42.6  42.3  42.2  43.7  76.7    60%
==============  ====  ====  ====  ====  ====  ====  ====  ======  ====

Held actions and the random sequence agree within ~1.5 dB (mean) except in beam_rider (random
27.5, holds 31.9). Where many pairs are identical (riverraid, space_invaders, beam_rider) whole
runs of ~5 consecutive clips have every branch equal to the factual frames: the start-up and the
death/respawn sequences, in which the game ignores input (the random policy dies often).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from pipelines.data.video import encode_mp4, resize_frames
from pipelines.errors import V2WError
from pipelines.fileio import atomic_open, write_bytes_atomic, write_json_atomic
from pipelines.metrics.image import psnr_from_mse

# held alternatives, most visible first: the four moves (in an rng order), standing still, firing
MOVES = ("UP", "DOWN", "LEFT", "RIGHT")
MAX_HOLD = 6  # the policy holds an action 1..MAX_HOLD steps


def _open_ale(game: str, seed: int, full_action_space: bool):
    """A deterministic emulator (sticky actions off) and its action set."""
    try:
        from ale_py import ALEInterface, LoggerMode, roms
    except ImportError:
        raise V2WError("the sample dataset needs ale-py; pip install ale-py") from None
    ALEInterface.setLoggerMode(LoggerMode.Error)
    ale = ALEInterface()
    ale.setInt("random_seed", seed)
    ale.setFloat("repeat_action_probability", 0.0)  # deterministic given the seed
    try:
        ale.loadROM(roms.get_rom_path(game))
    except (RuntimeError, TypeError, ValueError) as e:
        raise V2WError(f"cannot load the {game!r} ROM ({e}); pass an ale-py ROM name such as boxing") from None
    # the minimal set (4 for Breakout); the full 18 gives every game the same action space
    action_set = list(ale.getLegalActionSet() if full_action_space else ale.getMinimalActionSet())
    return ale, action_set


def action_names(action_set) -> list[str]:
    return [str(a).split(".")[-1] for a in action_set]


def _step(ale, action, frame_skip: int) -> None:
    for _ in range(frame_skip):
        ale.act(action)


def play_episode(ale, action_set, rng, frames: int, frame_skip: int, snapshots=()) -> tuple[list, list, dict]:
    """One factual episode -> (frames, action ids, {frame index: emulator state cloned right
    after that frame was observed}) for the frame indices in ``snapshots``."""
    ale.reset_game()
    ale.act(action_set[1] if len(action_set) > 1 else action_set[0])  # FIRE launches the ball
    obs, ids, states = [ale.getScreenRGB()], [], {}
    snapshots = set(snapshots)
    if 0 in snapshots:
        states[0] = ale.cloneState()
    held, left = 0, 0
    while len(obs) < frames and not ale.game_over():
        if left == 0:
            held, left = int(rng.integers(len(action_set))), int(rng.integers(1, MAX_HOLD + 1))
        _step(ale, action_set[held], frame_skip)
        ids.append(held)
        obs.append(ale.getScreenRGB())
        if len(obs) - 1 in snapshots:
            states[len(obs) - 1] = ale.cloneState()
        left -= 1
    return obs, ids, states


def play_branch(ale, state, action_set, ids, frame_skip: int) -> list[np.ndarray] | None:
    """Restore ``state`` and play ``ids`` -> the frames observed after each step, or None when
    the game ends on the way (such a branch is not a full clip)."""
    ale.restoreState(state)
    out = []
    for a in ids:
        _step(ale, action_set[a], frame_skip)
        if ale.game_over():
            return None
        out.append(ale.getScreenRGB())
    return out


def _hold_order(names: list[str], rng) -> list[int]:
    """Action ids in the order held alternatives are taken: the moves (rng order), NOOP, FIRE,
    then every other action (rng order), so the first few differ visibly from each other."""
    moves = [names.index(m) for m in MOVES if m in names]
    rng.shuffle(moves)
    still = [names.index(m) for m in ("NOOP", "FIRE") if m in names]
    rest = [i for i in range(len(names)) if i not in moves and i not in still]
    rng.shuffle(rest)
    return moves + still + rest


def _random_sequence(n_actions: int, length: int, rng) -> list[int]:
    """Ids in the policy's style: each action held 1..MAX_HOLD steps."""
    out: list[int] = []
    while len(out) < length:
        out += [int(rng.integers(n_actions))] * int(rng.integers(1, MAX_HOLD + 1))
    return out[:length]


def alternatives(names: list[str], logged: list[int], k: int, rng) -> list[tuple[str, list[int]]]:
    """K alternatives to the ``logged`` ids (the actions the branch replaces): K-1 distinct held
    actions, not the logged action at the branch point unless the set has too few, then one
    random sequence (K = 1: one held action). Fewer when the action set is smaller than K-1."""
    length = len(logged)
    order = _hold_order(names, rng)
    order = [a for a in order if a != logged[0]] + [a for a in order if a == logged[0]]
    n_hold = k - 1 if k > 1 else 1
    out = [(f"hold {names[a]}", [a] * length) for a in order[:n_hold]]
    if k > 1:
        taken = [list(logged)] + [ids for _, ids in out]
        seq = _random_sequence(len(names), length, rng)
        for _ in range(20):  # a random draw equal to one we have is no new counterfactual
            if seq not in taken:
                break
            seq = _random_sequence(len(names), length, rng)
        out.append(("random", seq))
    return out


def clip_starts(n_frames: int, clip_len: int) -> list[int]:
    """prepare's default clips: stride = clip length, no overlap, the tail dropped."""
    return list(range(0, n_frames - clip_len + 1, clip_len))


def _check_branch_args(branches: int, clip_len: int, branch_context: int) -> None:
    if branches < 0:
        raise V2WError(f"--branches must be >= 0. Got {branches}")
    if branches and not 1 <= branch_context < clip_len:
        raise V2WError(f"--branch-context must be in [1, --clip-len). Got {branch_context} with --clip-len {clip_len}")


def record_branches(
    ale, action_set, obs, ids, states, clip_len: int, context: int, k: int, frame_skip: int, rng
) -> list[dict]:
    """Branches of one played episode: dicts with start, index k, label, frames (T, H, W, 3)
    and ids (T-1,). ``states[s + context - 1]`` must hold the clone for every clip start s."""
    names = action_names(action_set)
    out = []
    for s in clip_starts(len(obs), clip_len):
        logged = ids[s + context - 1 : s + clip_len - 1]  # the T-C actions the branch replaces
        for b, (label, alt) in enumerate(alternatives(names, logged, k, rng)):
            played = play_branch(ale, states[s + context - 1], action_set, alt, frame_skip)
            if played is None:  # the game ended inside the branch
                continue
            out.append({
                "start": s,
                "k": b,
                "label": label,
                "frames": np.stack(obs[s : s + context] + played),
                "ids": np.asarray(ids[s : s + context - 1] + alt, np.int64),
            })
    return out


def _record(game, episodes, frames, frame_skip, seed, full_action_space, branches, clip_len, branch_context):
    """Yield (episode index, frames, ids, branches) for each episode, deterministic given ``seed``."""
    _check_branch_args(branches, clip_len, branch_context)
    ale, action_set = _open_ale(game, seed, full_action_space)
    rng = np.random.default_rng(seed)
    branch_rng = np.random.default_rng([seed, 1])  # its own stream: factual episodes do not depend on branches
    for e in range(episodes):
        snaps = [s + branch_context - 1 for s in clip_starts(frames, clip_len)] if branches else []
        obs, ids, states = play_episode(ale, action_set, rng, frames, frame_skip, snaps)
        found = []
        if branches:
            end = ale.cloneState(include_rng=True)
            found = record_branches(ale, action_set, obs, ids, states, clip_len, branch_context, branches,
                                    frame_skip, branch_rng)
            ale.restoreState(end)  # the next reset starts exactly where it would have without branches
        yield e, np.stack(obs), np.asarray(ids, np.int64), found, action_set


def _save_episode(out: Path, stem: str, frames: np.ndarray, ids: np.ndarray, fps: float) -> None:
    write_bytes_atomic(out / f"{stem}.mp4", encode_mp4(frames, fps, crf=4))
    with atomic_open(out / f"{stem}.npy") as f:
        np.save(f, ids, allow_pickle=False)


def make_atari_episodes(
    out: str | Path,
    game: str = "breakout",
    episodes: int = 8,
    frames: int = 96,
    frame_skip: int = 4,
    seed: int = 0,
    fps: float = 15.0,
    full_action_space: bool = False,
    branches: int = 0,
    clip_len: int = 8,
    branch_context: int = 2,
) -> Path:
    """Play ``episodes`` episodes of ``frames`` frames each and write them to ``out``; with
    ``branches`` K > 0 also K counterfactual branches per clip of ``clip_len`` (module doc)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    table: dict[str, dict] = {}
    action_set = []
    for e, obs, ids, found, action_set in _record(game, episodes, frames, frame_skip, seed, full_action_space,
                                                  branches, clip_len, branch_context):
        # T frames, T-1 actions: nothing is taken after the last frame (prepare pads one row)
        _save_episode(out, f"episode_{e:03d}", obs, ids, fps)
        for br in found:
            stem = f"episode_{e:03d}__s{br['start']:05d}_b{br['k']}"
            _save_episode(out, stem, br["frames"], br["ids"], fps)
            table[stem] = {"parent": f"episode_{e:03d}", "start": br["start"], "shared_frames": branch_context,
                           "clip_len": clip_len, "label": br["label"], "frame_skip": frame_skip}
    write_json_atomic(out / "actions.json", {"game": game, "actions": action_names(action_set)})
    if branches:
        write_json_atomic(out / "branches.json", {
            "game": game, "seed": seed, "frame_skip": frame_skip, "fps": fps, "clip_len": clip_len,
            "shared_frames": branch_context, "alternatives": branches, "full_action_space": full_action_space,
            "layout": "each branch is an episode of clip_len frames: its parent's frames [start, start + "
                      "shared_frames), then the alternative's; actions: the parent's ids for rows start.."
                      "start + shared_frames - 2, then the alternative's",
            "branches": table,
        })
    return out


# ---------------------------------------------------------------- the emulator's own gap


def _mse_per_frame(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(N, H, W, 3) uint8 pairs -> (N,) mean squared error."""
    return ((a.astype(np.float64) - b.astype(np.float64)) ** 2).mean(axis=(1, 2, 3))


def emulator_gap(
    game: str,
    episodes: int = 4,
    frames: int = 96,
    frame_skip: int = 4,
    clip_len: int = 8,
    branch_context: int = 2,
    branches: int = 4,
    seed: int = 0,
    size: tuple[int, int] = (64, 64),
    full_action_space: bool = False,
) -> dict:
    """How far an action change moves the picture: PSNR per horizon (1..T-C) between the factual
    frames and each alternative's, both resized to ``size`` by stretching (as ``prepare --size HxW
    --resize stretch``). Keys: ``all``, ``hold`` (every held action), and one per label; each has
    psnr (mean), psnr_per_horizon, same (share of identical frame pairs) and n (branches)."""
    _check_branch_args(branches or 1, clip_len, branch_context)
    vals: dict[str, list[np.ndarray]] = {}
    for _, obs, _, found, _ in _record(game, episodes, frames, frame_skip, seed, full_action_space,
                                       branches, clip_len, branch_context):
        for br in found:
            s = br["start"]
            fact = resize_frames(obs[s + branch_context : s + clip_len], size, "stretch")
            alt = resize_frames(br["frames"][branch_context:], size, "stretch")
            mse = _mse_per_frame(fact, alt)
            kind = "hold" if br["label"].startswith("hold") else br["label"]
            for key in {"all", kind, br["label"]}:
                vals.setdefault(key, []).append(mse)
    out = {"game": game, "settings": {"episodes": episodes, "frames": frames, "frame_skip": frame_skip,
                                      "clip_len": clip_len, "shared_frames": branch_context, "branches": branches,
                                      "seed": seed, "size": list(size)}}
    for key, rows in sorted(vals.items()):
        mse = np.stack(rows)  # (n, T-C)
        psnr = psnr_from_mse(mse)
        out[key] = {"psnr": float(psnr.mean()), "psnr_per_horizon": psnr.mean(axis=0).tolist(),
                    "pooled_psnr": float(psnr_from_mse(mse.mean())),
                    "pooled_psnr_per_horizon": psnr_from_mse(mse.mean(axis=0)).tolist(),
                    "same": float((mse == 0).mean()), "n": len(rows)}
    return out


def gap_table(gaps: list[dict], keys=("all", "hold", "random"), metric: str = "psnr") -> str:
    """Markdown: one row per (game, alternative) with ``metric`` (psnr: per-pair PSNR capped at
    100 dB, then averaged; pooled_psnr: PSNR of the mean MSE) per horizon, its mean, and the share
    of identical frame pairs."""
    h = max(len(g[k][f"{metric}_per_horizon"]) for g in gaps for k in keys if k in g)
    lines = ["| game | alternative | n | " + " | ".join(f"h{i + 1}" for i in range(h)) + " | mean | same |",
             "|---" * (h + 5) + "|"]
    for g in gaps:
        for k in keys:
            if k in g:
                r = g[k]
                cells = " | ".join(f"{v:.1f}" for v in r[f"{metric}_per_horizon"])
                lines.append(f"| {g['game']} | {k} | {r['n']} | {cells} | {r[metric]:.1f} | {r['same']:.0%} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    """``python -m pipelines.data.sample --game boxing --episodes 8 --frames 96 --seed 0 OUT``."""
    import argparse
    import json

    p = argparse.ArgumentParser(prog="python -m pipelines.data.sample", description=__doc__.split("\n")[0])
    p.add_argument("out", nargs="?", help="folder to write episode_NNN.mp4/.npy + actions.json into")
    p.add_argument("--game", default="breakout", help="an ale-py ROM name (breakout, boxing, pong, freeway, ...); "
                   "with --gap a comma-separated list")
    p.add_argument("--episodes", type=int, default=8)
    p.add_argument("--frames", type=int, default=96, help="frames per episode (fewer if the game ends)")
    p.add_argument("--frame-skip", type=int, default=4)
    p.add_argument("--seed", type=int, default=0, help="emulator + policy seed; use new seeds for held-out test episodes")
    p.add_argument("--full-action-space", action="store_true", help="all 18 Atari actions (same action space for every game)")
    p.add_argument("--branches", type=int, default=0, help="K counterfactual branches per clip (0 = none)")
    p.add_argument("--clip-len", type=int, default=8, help="T: branch clips cover prepare's clips of T frames")
    p.add_argument("--branch-context", type=int, default=2, help="C: frames a branch shares with its parent")
    p.add_argument("--gap", action="store_true", help="write nothing; print the emulator's factual-vs-branch PSNR "
                   "per horizon (64x64) for each --game, with --branches K (default 4)")
    p.add_argument("--json", action="store_true", help="with --gap: print the numbers as JSON")
    a = p.parse_args(argv)
    try:
        if a.gap:
            gaps = [emulator_gap(g.strip(), a.episodes, a.frames, a.frame_skip, a.clip_len, a.branch_context,
                                 a.branches or 4, a.seed, full_action_space=a.full_action_space)
                    for g in a.game.split(",") if g.strip()]
            if a.json:
                print(json.dumps(gaps, indent=1))
                return
            print("PSNR per pair (identical frames capped at 100 dB), averaged:\n" + gap_table(gaps))
            print("PSNR of the mean MSE over pairs:\n" + gap_table(gaps, metric="pooled_psnr"), end="")
            return
        if a.out is None:
            raise V2WError("give an output folder (or --gap)")
        make_atari_episodes(a.out, a.game, a.episodes, a.frames, a.frame_skip, a.seed,
                            full_action_space=a.full_action_space, branches=a.branches, clip_len=a.clip_len,
                            branch_context=a.branch_context)
    except V2WError as e:
        raise SystemExit(f"error: {e}") from None


if __name__ == "__main__":
    main()
