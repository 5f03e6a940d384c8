"""Benchmark ``v2w play``: what a player gets, without the browser.

Drives a :class:`~pipelines.play.PlaySession` of the shipped world model (or ``--model``) for
``--frames`` frames per setting (enough to fill the window and slide it) and prints ms/frame and
frames/s at several ``--steps`` / ``--guidance`` settings, next to the batch rollout's time per
frame at ``v2w rollout``'s defaults (10 steps, guidance 2.5) measured in the same run (the
baseline: ratios are against it). ``--threads`` sets torch's threads; ``--load`` keeps one core busy
in a second process meanwhile (the browser's share of a 2-core machine). With ``--data DATA`` each
setting is also scored the way ``v2w eval`` does on ``--limit`` clips (2 context frames): PSNR of
the model and of copy-last, and the true - shuffled actions gap, LPIPS of the model and of copy-last.

    python benchmarks/play.py [--settings 1x1,2x1,4x1,10x2.5] [--slides 1,4] [--frames 200] [--threads 1] [--load] [--browser] [--data DATA --limit 12]

``--browser``: each setting again in the page itself (headless Debian chromium, real-time mode, a key
held, ``--tick`` 1 so the page asks for the next frame as soon as one arrives): the frames/s the page
received over ``--frames`` frames and its own counter, PNG encoding and the WebSocket included.

Steady state: over ``--frames`` 200 the window fills and slides; each line says the share of the time
spent rebuilding the cache after the window moved, which ``--slides`` (the window's move, v2w
play's ``--slide``) cuts to one rebuild per K frames.
"""

from __future__ import annotations

import argparse
import itertools
import multiprocessing as mp
import tempfile
import time

import numpy as np
import torch


def _spin(stop):
    while not stop.is_set():
        sum(i * i for i in range(10000))


def speed(model, ctx, steps: int, guidance: float, frames: int, slide: int = 1) -> tuple[float, list[float], float]:
    """-> (mean ms/frame, ms per frame, share of the time spent rebuilding the cache after window moves)."""
    from pipelines.play import PlaySession, PlaySettings

    session = PlaySession(model, ctx, PlaySettings(steps=steps, guidance=guidance, slide=slide))
    keys = [["ArrowRight"], ["ArrowUp"], [" "], [], ["ArrowLeft"], ["ArrowDown"]]
    session.step(keys[0])  # warm-up
    session.reset()
    for i in range(frames):
        session.step(keys[i % len(keys)])
    rebuild = session.stream.rebuild_seconds / (sum(session.ms) / 1000)
    return float(np.mean(session.ms)), session.ms, rebuild


def browser(model, ctx, steps: int, guidance: float, frames: int, slide: int, tick: int) -> dict:
    """The page in headless chromium, real-time mode, an arrow key held: frames/s over ``frames`` frames
    as the page received them, and the page's own counter (its last 3 s) at the end."""
    import shutil

    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.keys import Keys

    from pipelines.play import PlaySettings
    from pipelines.play_server import ServerConfig, headless_chromium, make_app, serve_in_thread

    chromium, driver_bin = shutil.which("chromium"), shutil.which("chromedriver")
    if not chromium or not driver_bin:
        raise SystemExit("--browser needs Debian's chromium and chromium-driver (apt-get install chromium chromium-driver)")
    app = make_app(model, ctx, PlaySettings(steps=steps, guidance=guidance, slide=slide),
                   ServerConfig(port=0, tick_ms=tick, record_dir=tempfile.mkdtemp()), model_name="benchmark")
    driver = headless_chromium(chromium, driver_bin)
    state = lambda: driver.execute_script("return window.v2w || null")  # noqa: E731
    try:
        with serve_in_thread(app) as port:
            driver.get(f"http://127.0.0.1:{port}/")
            while not state():
                time.sleep(0.05)
            ActionChains(driver).key_down(Keys.ARROW_RIGHT).perform()
            # polled lightly (the count alone, 5 times a second): reading the whole state often would
            # itself take CPU from the model through chromedriver
            count = lambda: driver.execute_script("return window.v2w.frames")  # noqa: E731
            while count() < 10:  # past the first frames (and the page's start)
                time.sleep(0.05)
            f0, t0 = count(), time.perf_counter()
            while (f1 := count()) < f0 + frames:
                time.sleep(0.2)
            dt, st = time.perf_counter() - t0, state()
            # the server's own ms per step over those frames: above the in-process figure, the page's
            # processes took CPU from the model; equal to it, the rest is the round trip
            server_ms = float(np.mean(st["ms"][f0:]))
            return {"fps": (f1 - f0) / dt, "counter": st.get("fps", 0.0), "server_ms": server_ms}
    finally:
        driver.quit()


def quality(model_path: str, data: str, limit: int, steps: int, guidance: float) -> dict:
    from pipelines.evaluate import EvalConfig
    from pipelines.evaluate import run as evaluate
    from pipelines.rollout import RolloutJob, run_batch
    from pipelines.sampler import RolloutConfig

    with tempfile.TemporaryDirectory() as tmp:
        run_batch(RolloutJob(model=model_path, out=f"{tmp}/pred", data=data, split="train", limit=limit, context_frames=2,
                             shuffle_actions=True, batch_size=16), RolloutConfig(steps=steps, guidance=guidance))
        rep = evaluate(EvalConfig(pred=f"{tmp}/pred", out=f"{tmp}/rep", metrics=("psnr", "lpips"), baseline="copy-last"))
    sets = rep["sets"]
    return {"psnr": sets["model"]["psnr"], "copy_last": sets["copy-last"]["psnr"],
            "gap": sets["model"]["psnr"] - sets["shuffled-actions"]["psnr"],
            "lpips": sets["model"]["lpips"], "copy_last_lpips": sets["copy-last"]["lpips"]}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default=None, help="MODEL folder [default: the shipped world model]")
    ap.add_argument("--settings", default="1x1,2x1,4x1,4x2.5,10x2.5", help="STEPSxGUIDANCE, comma-separated")
    ap.add_argument("--frames", type=int, default=200, help="frames per setting (200: the window fills and slides many times)")
    ap.add_argument("--baseline-frames", type=int, default=24, help="frames of the baseline rollout")
    ap.add_argument("--slides", default="1", help="window moves (--slide) to measure each setting at, e.g. 1,4")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--load", action="store_true", help="keep one core busy in another process meanwhile")
    ap.add_argument("--browser", action="store_true", help="also measure each setting in the page (headless chromium)")
    ap.add_argument("--tick", type=int, default=1, help="with --browser: the page's --tick (1: as fast as frames come)")
    ap.add_argument("--data", default=None, help="DATA with fresh clips: also score each setting")
    ap.add_argument("--limit", type=int, default=12)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    from pipelines.models.checkpoint import shipped_world_model
    from pipelines.models.world_model import load_model
    from pipelines.rollout import to_pixels
    from pipelines.sampler import Roller, RolloutConfig

    path = args.model or str(shipped_world_model())
    model = load_model(path)
    h, w = (model.meta.get("trained") or {}).get("resolution") or (64, 64)
    ctx = np.random.default_rng(0).integers(0, 255, (2, h, w, 3), dtype=np.uint8)
    if args.data:
        from pipelines.play import load_context

        ctx, _ = load_context(model, data=args.data, context_frames=2)
    stop = mp.Event()
    spinner = mp.Process(target=_spin, args=(stop,), daemon=True) if args.load else None
    if spinner:
        spinner.start()
    try:
        # the baseline: a batch rollout of one stream at v2w rollout's defaults, same frames
        pixels = to_pixels(ctx, "cpu")
        with torch.no_grad():
            lat = model.encode_frames(pixels)
        a = model.unet.config.action_dim
        n_base = min(args.frames, args.baseline_frames)
        acts = torch.nn.functional.one_hot(torch.arange(2 + n_base) % a, a).float()[None]
        roller = Roller(model, RolloutConfig(steps=10, guidance=2.5))
        t0 = time.perf_counter()
        roller.rollout(lat, pixels, acts, n_base)
        base_ms = (time.perf_counter() - t0) / n_base * 1000
        print(f"threads {args.threads}{', one core busy in another process' if args.load else ''}; {args.frames} frames each "
              f"(the baseline {n_base})")
        print(f"baseline  v2w rollout (10 steps, guidance 2.5): {base_ms:7.0f} ms/frame  {1000 / base_ms:5.2f} frames/s")
        for spec, slide in itertools.product(args.settings.split(","), (int(k) for k in args.slides.split(","))):
            steps, guidance = int(spec.split("x")[0]), float(spec.split("x")[1])
            ms, per, rebuild = speed(model, ctx, steps, guidance, args.frames, slide)
            line = (f"play      steps {steps:2d} guidance {guidance:3.1f} slide {slide}: {ms:7.0f} ms/frame  {1000 / ms:5.2f} frames/s  "
                    f"({base_ms / ms:4.1f}x the baseline; slowest frame {max(per):.0f} ms; {100 * rebuild:.0f}% rebuilding the cache)")
            if args.browser:
                b = browser(model, ctx, steps, guidance, args.frames, slide, args.tick)
                line += f"  browser: {b['fps']:5.2f} frames/s (the page's counter {b['counter']:.1f}; the server's step {b['server_ms']:.0f} ms)"
            if args.data:
                q = quality(path, args.data, args.limit, steps, guidance)
                line += (f"  PSNR {q['psnr']:.2f} (copy-last {q['copy_last']:.2f}), true-shuffled {q['gap']:+.3f} dB, "
                         f"LPIPS {q['lpips']:.3f} (copy-last {q['copy_last_lpips']:.3f})")
            print(line, flush=True)
    finally:
        stop.set()
        if spinner:
            spinner.join(timeout=5)


if __name__ == "__main__":
    main()
