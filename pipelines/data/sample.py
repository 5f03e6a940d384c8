"""A small real interactive dataset, generated on the spot: Atari games played by a random policy.

ale-py ships the game ROMs, so this needs no download. The policy holds each action for a few
steps (1-6) so that its effect (a paddle moving) is visible over several frames. Output is the
``videos`` source layout: ``episode_NNN.mp4`` (full 210x160 frames) + ``episode_NNN.npy``
(integer action ids, row t = the action taken after frame t) + ``actions.json`` (id -> name).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from pipelines.data.video import encode_mp4
from pipelines.errors import V2WError
from pipelines.fileio import write_bytes_atomic, write_json_atomic


def make_atari_episodes(
    out: str | Path,
    game: str = "breakout",
    episodes: int = 8,
    frames: int = 96,
    frame_skip: int = 4,
    seed: int = 0,
    fps: float = 15.0,
    full_action_space: bool = False,
) -> Path:
    """Play ``episodes`` episodes of ``frames`` frames each and write them to ``out``."""
    try:
        from ale_py import ALEInterface, LoggerMode, roms
    except ImportError:
        raise V2WError("the sample dataset needs ale-py; pip install ale-py") from None
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    ALEInterface.setLoggerMode(LoggerMode.Error)
    ale = ALEInterface()
    ale.setInt("random_seed", seed)
    ale.setFloat("repeat_action_probability", 0.0)  # deterministic given the seed
    ale.loadROM(roms.get_rom_path(game))
    # the minimal set (4 for Breakout); the full 18 gives every game the same action space
    action_set = list(ale.getLegalActionSet() if full_action_space else ale.getMinimalActionSet())
    rng = np.random.default_rng(seed)
    for e in range(episodes):
        ale.reset_game()
        ale.act(action_set[1] if len(action_set) > 1 else action_set[0])  # FIRE launches the ball
        obs, ids = [ale.getScreenRGB()], []
        held, left = 0, 0
        while len(obs) < frames and not ale.game_over():
            if left == 0:
                held, left = int(rng.integers(len(action_set))), int(rng.integers(1, 7))
            for _ in range(frame_skip):
                ale.act(action_set[held])
            ids.append(held)
            obs.append(ale.getScreenRGB())
            left -= 1
        # T frames, T-1 actions: nothing is taken after the last frame (prepare pads one row)
        write_bytes_atomic(out / f"episode_{e:03d}.mp4", encode_mp4(np.stack(obs), fps, crf=4))
        with open(out / f"episode_{e:03d}.npy", "wb") as f:
            np.save(f, np.asarray(ids, np.int64), allow_pickle=False)
    write_json_atomic(out / "actions.json", {"game": game, "actions": [str(a).split(".")[-1] for a in action_set]})
    return out


def main(argv: list[str] | None = None) -> None:
    """``python -m pipelines.data.sample --game boxing --episodes 8 --frames 96 --seed 0 OUT``."""
    import argparse

    p = argparse.ArgumentParser(prog="python -m pipelines.data.sample", description=__doc__.split("\n")[0])
    p.add_argument("out", help="folder to write episode_NNN.mp4/.npy + actions.json into")
    p.add_argument("--game", default="breakout", help="an ale-py ROM name (breakout, boxing, pong, freeway, ...)")
    p.add_argument("--episodes", type=int, default=8)
    p.add_argument("--frames", type=int, default=96, help="frames per episode (fewer if the game ends)")
    p.add_argument("--frame-skip", type=int, default=4)
    p.add_argument("--seed", type=int, default=0, help="emulator + policy seed; use new seeds for held-out test episodes")
    p.add_argument("--full-action-space", action="store_true", help="all 18 Atari actions (same action space for every game)")
    a = p.parse_args(argv)
    try:
        make_atari_episodes(a.out, a.game, a.episodes, a.frames, a.frame_skip, a.seed, full_action_space=a.full_action_space)
    except V2WError as e:
        raise SystemExit(f"error: {e}") from None


if __name__ == "__main__":
    main()
