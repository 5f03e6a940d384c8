"""v2w play: key bindings, the session (step, reset, record -> replay equality), the server over its
WebSocket, and the page in a real headless Chromium."""

from __future__ import annotations

import json
import shutil
import socket
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from typer.testing import CliRunner

from pipelines.errors import V2WError
from pipelines.models.checkpoint import shipped_world_model
from pipelines.models.world_model import load_model
from pipelines.play import KeyBindings, PlaySession, PlaySettings, load_context
from pipelines.play_server import ServerConfig, check_port_free, headless_chromium, make_app, read_binary_frame, serve_in_thread
from pipelines.rollout import RolloutJob, run_interactive
from pipelines.sampler import RolloutConfig
from v2w_cli.app import app

ALE = ["NOOP", "FIRE", "UP", "RIGHT", "LEFT", "DOWN", "UPRIGHT", "UPLEFT", "DOWNRIGHT", "DOWNLEFT", "UPFIRE",
       "RIGHTFIRE", "LEFTFIRE", "DOWNFIRE", "UPRIGHTFIRE", "UPLEFTFIRE", "DOWNRIGHTFIRE", "DOWNLEFTFIRE"]


def fake_model(names=None, action_dim=18, action_type="discrete", stats=None):
    trained = {"action_names": names, "action_stats": stats}
    return SimpleNamespace(unet=SimpleNamespace(config=SimpleNamespace(action_dim=action_dim, action_type=action_type)),
                           meta={"trained": trained})


def test_atari_bindings_combine_held_keys():
    kb = KeyBindings.for_model(fake_model(ALE))
    assert kb.kind == "atari" and kb.source == "trained"
    act = lambda keys: kb.action(keys)[1]  # noqa: E731
    assert act([]) == "NOOP"
    assert act(["ArrowUp"]) == "UP" and act(["w"]) == "UP" and act(["W"]) == "UP"
    assert act(["ArrowUp", "ArrowRight"]) == "UPRIGHT" == act(["ArrowRight", "ArrowUp"])
    assert act(["ArrowDown", "ArrowLeft", " "]) == "DOWNLEFTFIRE"
    assert act(["ArrowUp", "ArrowDown"]) == "DOWN"  # no UP+DOWN action: the oldest key is dropped
    assert act(["x", "F5", "ArrowLeft"]) == "LEFT"  # unknown keys are ignored
    assert kb.action(["ArrowUp", "ArrowRight"])[0] == ALE.index("UPRIGHT")
    # a game with the minimal action set: combinations it lacks fall back to a single key
    kb = KeyBindings.for_model(fake_model(["NOOP", "FIRE", "RIGHT", "LEFT"], action_dim=4))
    assert kb.action(["ArrowRight", " "])[1] == "FIRE" and kb.action(["ArrowUp"])[1] == "NOOP"


def test_other_bindings_numbered_single_keys_and_continuous():
    kb = KeyBindings.for_model(fake_model(None, action_dim=3))
    assert kb.kind == "numbered" and kb.source == "unnamed" and kb.names == ["action 0", "action 1", "action 2"]
    assert kb.action(["2"]) == (1, "action 1") and kb.action(["1", "3"]) == (2, "action 2") and kb.action([])[0] == 0
    kb = KeyBindings.for_model(fake_model(["w", "a", "s", "d"], action_dim=4))
    assert kb.kind == "keys" and kb.action(["d"]) == (3, "d")
    stats = {"mean": [0.5, -1.0], "std": [2.0, 0.25]}
    kb = KeyBindings.for_model(fake_model(["dx", "dy"], action_dim=2, action_type="continuous", stats=stats))
    a, label = kb.action(["d", "s"])  # +dx, -dy: one std of the training data
    np.testing.assert_allclose(a, [2.5, -1.25])
    assert label == "dx+ dy-"
    np.testing.assert_allclose(kb.action([])[0], [0.5, -1.0])
    with pytest.raises(V2WError, match="takes no actions"):
        KeyBindings.for_model(fake_model(action_dim=0))


def test_session_record_replays_with_v2w_rollout(rollout_env, tmp_path):
    """A played episode, written by record, is reproduced frame for frame by `v2w rollout --actions`;
    reset returns to the context and the same keys give the same frames."""
    model = load_model(rollout_env / "model")
    ctx, _ = load_context(model, data=str(rollout_env / "data"), context_frames=2)
    session = PlaySession(model, ctx, PlaySettings(steps=2, guidance=2.0, seed=3), model_name=str(rollout_env / "model"))
    assert session.bindings.kind == "numbered"
    keys = [["2"], ["4"], [], ["3", "1"], ["x"]]
    first = [session.step(k)["frame"] for k in keys]
    assert session.actions == [1, 3, 0, 0, 0] and session.keys == [["2"], ["4"], [], ["3", "1"], []]
    rec = session.record(tmp_path / "rec")
    info = json.loads((rec / "rollout.json").read_text())
    assert info["kind"] == "v2w-rollout" and info["horizon"] == 5 and "--actions" in info["replay"]
    res = CliRunner().invoke(app, ["info", str(rec)])
    assert res.exit_code == 0 and "v2w play" in res.output
    run_interactive(RolloutJob(model=str(rollout_env / "model"), out=str(tmp_path / "replay"), context=str(rec / "context.npy"),
                               actions=str(rec / "acts.npy"), context_frames=2),
                    RolloutConfig(steps=2, guidance=2.0, seed=3))
    np.testing.assert_array_equal(np.load(tmp_path / "replay" / "frames.npy"), np.load(rec / "frames.npy"))
    assert np.array_equal(session.reset(), ctx[-1]) and session.step_index == 0
    again = [session.step(k)["frame"] for k in keys]
    assert all(np.array_equal(a, b) for a, b in zip(first, again))
    assert not np.array_equal(session.step(["2"])["frame"], session.reset())  # a new frame differs from the context


def test_server_sessions_limit_and_protocol(rollout_env, tmp_path):
    from starlette.testclient import TestClient

    model = load_model(rollout_env / "model")
    ctx, _ = load_context(model, data=str(rollout_env / "data"), context_frames=2)
    server = ServerConfig(max_sessions=1, record_dir=str(tmp_path / "recs"))
    app = make_app(model, ctx, PlaySettings(steps=1), server, model_name="m")
    client = TestClient(app)
    page = client.get("/").text
    assert "v2w play" in page
    fps = (model.meta.get("trained") or {}).get("fps")  # real time is the model's frame rate by default
    assert f"TICK = {round(1000 / fps) if fps else 125};" in page
    with client.websocket_connect("/ws") as ws:
        hello = ws.receive_json()
        assert hello["type"] == "hello" and hello["numbered"] and "1" in hello["keys"]
        with client.websocket_connect("/ws") as second:  # the limit: a clear message, then closed
            msg = second.receive_json()
            assert msg["type"] == "error" and "--max-sessions 1" in msg["message"]
        ws.send_json({"type": "record"})
        assert "nothing to record" in ws.receive_json()["message"]
        ws.send_json({"type": "step", "keys": ["3", "not-a-key"]})
        frame = ws.receive_json()
        assert frame["type"] == "frame" and frame["index"] == 1 and frame["label"] == "action 2" and frame["keys"] == ["3"]
        ws.send_json({"type": "step", "keys": "../../etc/passwd"})  # not a list: no keys
        assert ws.receive_json()["label"] == "action 0"
        ws.send_json({"type": "step", "keys": ["2"], "binary": True})  # the page's form: one binary message
        head, pixels = read_binary_frame(ws.receive_bytes())
        assert head["type"] == "frame" and head["index"] == 3 and head["label"] == "action 1" and head["keys"] == ["2"]
        (session,) = app.state.sessions.values()
        assert pixels.shape == session.frames[-1].shape and np.array_equal(pixels, session.frames[-1])
        ws.send_json({"type": "record"})
        rec = ws.receive_json()
        assert rec["type"] == "recorded" and Path(rec["path"]).parent == tmp_path / "recs"
        assert (Path(rec["path"]) / "acts.npy").exists()
        ws.send_json({"type": "reset"})
        assert ws.receive_json()["index"] == 0
        ws.send_json({"type": "nope"})
        assert ws.receive_json()["type"] == "error"
        ws.send_text("not json")
        assert "JSON" in ws.receive_json()["message"]
    time.sleep(0.2)
    assert not app.state.sessions  # the closed tab freed its session
    with client.websocket_connect("/ws") as ws:
        assert ws.receive_json()["type"] == "hello"


def test_port_in_use_is_one_line_error():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        with pytest.raises(V2WError, match=f"127.0.0.1:{port}.*another --port"):
            check_port_free("127.0.0.1", port)


def _browser():
    """Headless Debian chromium through Selenium, or a skip naming what is missing."""
    chromium, driver = shutil.which("chromium"), shutil.which("chromedriver")
    if not chromium or not driver:
        pytest.skip("no browser: install Debian's chromium and chromium-driver to run the browser test")
    pytest.importorskip("selenium.webdriver", reason="selenium is not installed (pip install -e '.[dev]')")
    return headless_chromium(chromium, driver)


def test_page_in_headless_chromium(tmp_path):
    """The shipped Boxing model in the page: keys pressed in step mode become frames whose actions are
    the keys' (UP, UPRIGHT, FIRE), reset returns to the context, record writes those actions."""
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    driver = _browser()
    model = load_model(shipped_world_model())
    ctx = np.random.default_rng(0).integers(0, 255, (2, 64, 64, 3), dtype=np.uint8)
    server = ServerConfig(port=0, record_dir=str(tmp_path / "recs"))
    app = make_app(model, ctx, PlaySettings(steps=1), server, model_name="tiny")
    try:
        with serve_in_thread(app) as port:
            driver.get(f"http://127.0.0.1:{port}/")
            state = lambda: driver.execute_script("return window.v2w || null")  # noqa: E731

            def wait(cond, what, seconds=60):
                t0 = time.time()
                while time.time() - t0 < seconds:
                    st = state()
                    if st and cond(st):
                        return st
                    time.sleep(0.1)
                raise AssertionError(f"timed out waiting for {what}; page state {state()}")

            wait(lambda st: st["hello"]["kind"] == "atari", "the hello message")
            driver.find_element(By.ID, "mode").click()  # step mode: one frame per key press
            assert driver.find_element(By.ID, "mode").text == "step mode"
            driver.find_element(By.ID, "reset").click()  # drop what real-time mode (the default) played so far
            wait(lambda st: st["resets"] == 1, "reset")
            ActionChains(driver).key_down(Keys.ARROW_UP).perform()  # UP
            wait(lambda st: st["frames"] == 1, "frame 1")
            ActionChains(driver).key_down(Keys.ARROW_RIGHT).perform()  # UP still held: UPRIGHT
            wait(lambda st: st["frames"] == 2, "frame 2")
            ActionChains(driver).key_up(Keys.ARROW_RIGHT).key_up(Keys.ARROW_UP).perform()
            ActionChains(driver).send_keys(Keys.SPACE).perform()  # FIRE
            st = wait(lambda st: st["frames"] >= 3 and len(st["labels"]) >= 3, "frame 3")
            assert st["labels"][:3] == ["UP", "UPRIGHT", "FIRE"], st["labels"]
            # the canvas holds the last frame's own pixels (sent as raw RGBA, drawn with putImageData)
            shown = driver.execute_script("const c = document.getElementById('frame'); "
                                          "return [c.width, c.height, Array.from(c.getContext('2d').getImageData(0, 0, c.width, c.height).data)]")
            (session,) = app.state.sessions.values()
            assert shown[:2] == [64, 64]
            assert np.array_equal(np.array(shown[2], np.uint8).reshape(64, 64, 4)[..., :3], session.frames[-1])
            assert "ms/frame" in driver.find_element(By.ID, "stats").text
            driver.find_element(By.ID, "record").click()
            st = wait(lambda st: st.get("recorded"), "the recording")
            acts = np.load(Path(st["recorded"]) / "acts.npy")
            names = model.meta["trained"]["action_names"]
            assert [names[i] for i in acts] == ["UP", "UPRIGHT", "FIRE"]
            driver.save_screenshot(str(tmp_path / "play.png"))
            assert (tmp_path / "play.png").stat().st_size > 1000
            driver.find_element(By.ID, "reset").click()
            wait(lambda st: st["resets"] == 2 and st["frames"] == 0, "reset")
    finally:
        driver.quit()
