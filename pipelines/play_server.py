"""``v2w play``'s web server: one model per process, one :class:`~pipelines.play.PlaySession` per
browser tab, frames over a WebSocket (Starlette on uvicorn).

Protocol (JSON text messages on ``/ws``). The client sends::

    {"type": "step", "keys": ["ArrowUp", " "]}   one new frame for the keys held now
    {"type": "reset"}                            back to the context
    {"type": "record"}                           save the episode since the last reset

and gets ``{"type": "hello", "model", "bindings", "numbered", "settings", "frame", ...}`` on connect,
``{"type": "frame", "frame": <PNG, base64>, "index", "label", "ms", ...}`` per step,
``{"type": "recorded", "path"}`` and ``{"type": "error", "message"}``. A step with ``"binary": true``
is answered with one binary message instead (what the page asks for: no PNG to encode or decode)::

    <uint32 little-endian n> <n bytes: the frame message's JSON, "width"/"height" for "frame"> <height * width * 4 bytes: RGBA>

Step mode (one frame per key press) and real-time mode (one frame per tick with the keys held then)
are the page's: the server only answers steps. Nothing from the client names a file: recordings go
to the server's ``--record-dir``. Model calls run one at a time in a worker thread, so a slow frame never blocks the
event loop and a tab closed mid-frame only loses that frame.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import io
import itertools
import json
import socket
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterator

import numpy as np

from pipelines.errors import V2WError
from pipelines.play import PlaySession, PlaySettings


@dataclass
class ServerConfig:
    host: str = "127.0.0.1"
    port: int = 8765
    max_sessions: int = 2
    tick_ms: int | None = None  # real-time mode: the page asks for a frame at most this often [default: the model's frame rate]
    record_dir: str = "play-recordings"
    scale: int = 5  # the page shows frames upscaled this much (nearest neighbour)


def default_tick_ms(model) -> int:
    """Real time is the frame rate the model was trained at (15 frames/s: 67 ms); 125 ms if unrecorded."""
    fps = (model.meta.get("trained") or {}).get("fps")
    return max(1, round(1000 / float(fps))) if fps else 125


def png_base64(frame: np.ndarray) -> str:
    from PIL import Image  # only when serving

    buf = io.BytesIO()
    Image.fromarray(frame).save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


def binary_frame(frame: np.ndarray, header: dict) -> bytes:
    """A frame as one binary WebSocket message (module docstring): JSON header length, header, RGBA pixels."""
    h, w = frame.shape[:2]
    head = json.dumps({**header, "width": w, "height": h}).encode()
    rgba = np.concatenate([frame, np.full((h, w, 1), 255, np.uint8)], axis=-1)
    return len(head).to_bytes(4, "little") + head + rgba.tobytes()


def read_binary_frame(data: bytes) -> tuple[dict, np.ndarray]:
    """The inverse of :func:`binary_frame`: (header, (H, W, 3) uint8 frame)."""
    n = int.from_bytes(data[:4], "little")
    head = json.loads(data[4 : 4 + n])
    rgba = np.frombuffer(data[4 + n :], np.uint8).reshape(head["height"], head["width"], 4)
    return head, rgba[..., :3]


def check_port_free(host: str, port: int) -> None:
    """A port in use is a one-line error naming it (before uvicorn would print a traceback)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind((host, port))
        except OSError as e:
            raise V2WError(f"cannot listen on {host}:{port} ({e.strerror or e}); pass another --port") from None


def make_app(model, context: np.ndarray, settings: PlaySettings, server: ServerConfig, model_name: str, device: str = "cpu",
             context_name: str = ""):
    """The ASGI app: ``/`` the page, ``/ws`` one session per connection (at most ``max_sessions``)."""
    from starlette.applications import Starlette
    from starlette.responses import HTMLResponse
    from starlette.routing import Route, WebSocketRoute
    from starlette.websockets import WebSocket, WebSocketDisconnect

    lock = asyncio.Lock()  # one model: its calls run one at a time
    sessions: dict[int, PlaySession] = {}
    ids = itertools.count(1)
    record_dir = Path(server.record_dir)

    tick = server.tick_ms or default_tick_ms(model)

    async def page(request):
        return HTMLResponse(PAGE.replace("__SCALE__", str(server.scale)).replace("__TICK__", str(tick)))

    async def run(fn, *args):
        async with lock:
            return await asyncio.to_thread(fn, *args)

    def frame_header(session: PlaySession, **extra) -> dict:
        return {"type": "frame", "index": session.step_index, **extra}

    def frame_message(session: PlaySession, frame: np.ndarray, **extra) -> dict:
        return {**frame_header(session, **extra), "frame": png_base64(frame)}

    async def ws_endpoint(ws: WebSocket):
        await ws.accept()
        if len(sessions) >= server.max_sessions:
            await ws.send_json({"type": "error", "fatal": True, "message": f"all {server.max_sessions} sessions are in use "
                                f"(--max-sessions {server.max_sessions}); close another tab and reload"})
            await ws.close()
            return
        sid = next(ids)
        sessions[sid] = None  # reserved while the session is built
        try:
            session = await run(PlaySession, model, context, settings, model_name, device)
            sessions[sid] = session
            b = session.bindings
            await ws.send_json({
                "type": "hello", "model": model_name, "context": context_name, "session": sid,
                "bindings": b.describe(), "kind": b.kind, "numbered": b.source == "unnamed",
                "keys": sorted(b.keys), "settings": asdict(settings), "context_frames": int(context.shape[0]),
                "window": session.roller.window, "frame": png_base64(session.frames[-1]),
            })
            while True:
                try:
                    msg = await ws.receive_json()
                except ValueError:  # not JSON: say so, keep the session
                    await ws.send_json({"type": "error", "message": "messages are JSON objects: {\"type\": \"step\", \"keys\": [...]}"})
                    continue
                kind = msg.get("type") if isinstance(msg, dict) else None
                if kind == "step":
                    keys = [str(k) for k in msg.get("keys", [])][:8] if isinstance(msg.get("keys"), list) else []
                    mouse = msg.get("mouse")
                    mouse = (float(mouse[0]), float(mouse[1])) if isinstance(mouse, list) and len(mouse) == 2 and \
                        all(isinstance(v, (int, float)) for v in mouse) else (0.0, 0.0)
                    t0 = time.perf_counter()
                    out = await run(session.step, keys, mouse)
                    extra = dict(label=out["label"], ms=round(out["ms"], 1), wall_ms=round((time.perf_counter() - t0) * 1000, 1),
                                 keys=session.keys[-1])
                    if msg.get("binary") is True:
                        await ws.send_bytes(binary_frame(out["frame"], frame_header(session, **extra)))
                    else:
                        await ws.send_json(frame_message(session, out["frame"], **extra))
                elif kind == "reset":
                    frame = await run(session.reset)
                    await ws.send_json(frame_message(session, frame, label="reset", ms=0.0))
                elif kind == "record":
                    if not session.step_index:
                        await ws.send_json({"type": "error", "message": "nothing to record yet: play a few frames first"})
                        continue
                    folder = record_dir / f"session-{sid}-{time.strftime('%Y%m%d-%H%M%S')}-{session.step_index}f"
                    path = await run(session.record, folder)
                    await ws.send_json({"type": "recorded", "path": str(path), "frames": session.step_index})
                else:
                    await ws.send_json({"type": "error", "message": f"unknown message type {kind!r}"})
        except WebSocketDisconnect:
            pass
        finally:
            sessions.pop(sid, None)  # a closed tab frees its session

    app = Starlette(routes=[Route("/", page), WebSocketRoute("/ws", ws_endpoint)])
    app.state.sessions = sessions
    return app


def serve(app, server: ServerConfig, log=print) -> None:
    import uvicorn  # only when serving

    check_port_free(server.host, server.port)
    if server.host not in ("127.0.0.1", "localhost", "::1"):
        log(f"warning: listening on {server.host}: anyone who can reach this machine can drive the model")
    log(f"open http://{'127.0.0.1' if server.host == '0.0.0.0' else server.host}:{server.port}/  (Ctrl+C stops)")
    uvicorn.run(app, host=server.host, port=server.port, log_level="warning", ws_max_size=1 << 20)


@contextlib.contextmanager
def serve_in_thread(app) -> Iterator[int]:
    """Serve ``app`` on a free local port in a background thread (the browser test, benchmarks/play.py
    --browser); yields the port once uvicorn is up, and stops it on exit."""
    import uvicorn

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    uv = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=uv.run, daemon=True)
    thread.start()
    try:
        for _ in range(100):
            if uv.started:
                break
            time.sleep(0.1)
        yield port
    finally:
        uv.should_exit = True
        thread.join(timeout=10)


def headless_chromium(chromium: str, driver: str):
    """Debian's chromium through Selenium (a dev dependency), headless: no browser is downloaded."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = chromium
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=900,700"):
        opts.add_argument(arg)
    return webdriver.Chrome(service=Service(driver), options=opts)


PAGE = r"""<!doctype html>
<html><head><meta charset="utf-8"><title>v2w play</title>
<style>
 body { font-family: system-ui, sans-serif; background: #111; color: #ddd; margin: 1.5em; }
 #frame { image-rendering: pixelated; image-rendering: crisp-edges; border: 1px solid #444; background: #000; }
 button { margin: 0 .3em .3em 0; padding: .35em .8em; background: #333; color: #eee; border: 1px solid #555; border-radius: 4px; }
 button.on { background: #2a5; }
 table { border-collapse: collapse; margin-top: .5em; } td { padding: .1em .8em .1em 0; }
 #stats, #status { font-family: ui-monospace, monospace; } .err { color: #f66; }
 .row { display: flex; gap: 2em; align-items: flex-start; }
</style></head>
<body>
<h2>v2w play <small id="model"></small></h2>
<div class="row">
 <div><canvas id="frame"></canvas>
  <div><button id="reset">reset</button><button id="pause">pause</button>
   <button id="mode">real-time</button><button id="record">record</button></div>
  <div id="stats">connecting...</div><div id="status"></div></div>
 <div><b>keys</b><table id="bindings"></table><div id="note"></div>
  <p>step mode: one frame per key press. real-time: one frame per tick with the keys held now.</p></div>
</div>
<script>
const SCALE = __SCALE__, TICK = __TICK__;
const canvas = document.getElementById("frame"), ctx = canvas.getContext("2d");
ctx.imageSmoothingEnabled = false;
const held = [];  // keys held now, oldest first
const mouse = [0, 0];  // movement since the last step (CS:GO models; pointer lock on the frame)
let ws, known = new Set(), realtime = true, paused = false, waiting = false, lastAsk = 0, times = [];
function size(w, h) {  // the canvas holds the frame's own pixels; CSS upscales it (pixelated)
  if (canvas.width === w && canvas.height === h) return;
  canvas.width = w; canvas.height = h; canvas.style.width = w * SCALE + "px"; canvas.style.height = h * SCALE + "px";
}
function show(b64) {  // a PNG (the hello and reset frames)
  const img = new Image();
  img.onload = () => { size(img.width, img.height); ctx.drawImage(img, 0, 0); };
  img.src = "data:image/png;base64," + b64;
}
function draw(m) { size(m.width, m.height); ctx.putImageData(new ImageData(m.pixels, m.width, m.height), 0, 0); }
function parse(data) {  // a JSON text message, or a binary frame: uint32 header length, JSON header, RGBA
  if (typeof data === "string") return JSON.parse(data);
  const n = new DataView(data).getUint32(0, true);
  const m = JSON.parse(new TextDecoder().decode(new Uint8Array(data, 4, n)));
  m.pixels = new Uint8ClampedArray(data, 4 + n);
  return m;
}
function send(msg) { if (!ws || ws.readyState !== 1) return false; ws.send(JSON.stringify(msg)); return true; }
function step(keys) {  // one request in flight at a time, and only once the session is ready
  if (waiting || !window.v2w) return;
  if (send({type: "step", keys: keys, mouse: [mouse[0], mouse[1]], binary: true})) { waiting = true; lastAsk = performance.now(); mouse[0] = mouse[1] = 0; }
}
function tick() {
  if (realtime && !paused && !waiting && performance.now() - lastAsk >= TICK) step(held.slice());
  requestAnimationFrame(tick);
}
function connect() {
  ws = new WebSocket((location.protocol === "https:" ? "wss://" : "ws://") + location.host + "/ws");
  ws.binaryType = "arraybuffer";
  ws.onmessage = (ev) => {
    const m = parse(ev.data);
    if (m.type === "hello") {
      const base = (p) => p.replace(/\/+$/, "").split("/").pop();
      document.getElementById("model").textContent = base(m.model) + (m.context ? " | " + base(m.context) : "");
      document.getElementById("model").title = m.model + " | " + m.context;
      known = new Set(m.keys);
      document.getElementById("bindings").innerHTML = m.bindings.map(r => "<tr><td><b>" + r[0] + "</b></td><td>" + r[1] + "</td></tr>").join("");
      document.getElementById("note").textContent = m.numbered ? "this MODEL records no action names: actions are numbered" : "";
      show(m.frame); document.getElementById("stats").textContent = "ready: " + m.context_frames + " context frame(s), window " + m.window;
      window.v2w = {hello: m, frames: 0, labels: [], keys: [], ms: [], resets: 0};
    } else if (m.type === "frame") {
      waiting = false;
      // ask for the next frame before drawing this one (not at the next animation frame): the
      // server computes it while the page decodes and draws
      if (realtime && !paused && m.label !== "reset" && performance.now() - lastAsk >= TICK) step(held.slice());
      if (m.pixels) draw(m); else show(m.frame);
      if (m.label === "reset") { window.v2w.frames = 0; window.v2w.labels = []; window.v2w.keys = []; window.v2w.ms = []; window.v2w.resets += 1; times = []; }
      else { window.v2w.frames = m.index; window.v2w.labels.push(m.label); window.v2w.keys.push(m.keys); window.v2w.ms.push(m.ms); times.push(performance.now()); }
      times = times.filter(t => performance.now() - t < 3000);
      const fps = times.length > 1 ? (times.length - 1) / ((times[times.length - 1] - times[0]) / 1000) : 0;
      window.v2w.fps = fps;  // the counter, over the last 3 s (benchmarks/play.py --browser reads it)
      document.getElementById("stats").textContent = "step " + m.index + " | " + m.label + " | " + m.ms + " ms/frame | " + fps.toFixed(1) + " frames/s";
    } else if (m.type === "recorded") {
      document.getElementById("status").textContent = "recorded " + m.frames + " frames: " + m.path; window.v2w.recorded = m.path;
    } else if (m.type === "error") {
      waiting = false; document.getElementById("status").innerHTML = "<span class=err>" + m.message + "</span>";
      if (m.fatal) document.getElementById("stats").textContent = "no session";
    }
  };
  ws.onclose = () => { document.getElementById("stats").textContent = "disconnected"; };
}
function keyName(e) { return e.key.length === 1 ? e.key.toLowerCase() : e.key; }
document.addEventListener("keydown", (e) => {
  const k = keyName(e); if (!known.has(k)) return;
  e.preventDefault();
  if (!held.includes(k)) held.push(k);
  if (!realtime && !e.repeat) { waiting = false; step(held.slice()); }
});
document.addEventListener("keyup", (e) => { const i = held.indexOf(keyName(e)); if (i >= 0) held.splice(i, 1); });
window.addEventListener("blur", () => { held.length = 0; });
canvas.addEventListener("click", () => { if (known.has("MouseLeft") && canvas.requestPointerLock) canvas.requestPointerLock(); });
document.addEventListener("mousemove", (e) => { if (document.pointerLockElement === canvas) { mouse[0] += e.movementX; mouse[1] += e.movementY; } });
document.addEventListener("mousedown", (e) => { const k = e.button === 2 ? "MouseRight" : "MouseLeft";
  if (document.pointerLockElement === canvas && known.has(k) && !held.includes(k)) held.push(k); });
document.addEventListener("mouseup", (e) => { const i = held.indexOf(e.button === 2 ? "MouseRight" : "MouseLeft"); if (i >= 0) held.splice(i, 1); });
document.getElementById("reset").onclick = () => { if (send({type: "reset"})) waiting = true; };
document.getElementById("pause").onclick = (e) => { paused = !paused; e.target.classList.toggle("on", paused); };
document.getElementById("mode").onclick = (e) => { realtime = !realtime; e.target.textContent = realtime ? "real-time" : "step mode"; };
document.getElementById("record").onclick = () => send({type: "record"});
connect(); requestAnimationFrame(tick);
</script></body></html>
"""
