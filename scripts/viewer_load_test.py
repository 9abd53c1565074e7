"""Load on the LRM viewer while `ns-train lrm-tiny` trains: websocket clients upload images (good, bad, oversized)
through viser's own upload protocol, on 127.0.0.1 only. Prints one JSON line.

Reported: how many uploads were answered (reconstructed or refused with a message, to the uploading browser), the
training step rate with and without the load, and the training process's peak resident memory (the viewer lives in
it). Every wait has a bound; the run stops ns-train at the end.

    python scripts/viewer_load_test.py --clients 16 --uploads-per-client 5
"""

from __future__ import annotations

import io
import json
import os
import re
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import msgspec
import numpy as np
import tyro
from PIL import Image

HOST = "127.0.0.1"
PART_BYTES = 512 * 1024
"""The part size viser's browser client sends."""
KEPT_MESSAGES = ("GuiAddUploadButtonMessage", "GuiAddMarkdownMessage", "GuiUpdateMessage", "SetCameraLookAtMessage")
"""What a client keeps of what the server sends (renders are dropped)."""
KINDS = ("good", "not_an_image", "oversized_bytes", "oversized_pixels", "transparent")
"""Upload i of a client is of kind KINDS[(client + i) % len(KINDS)]."""


@dataclass
class LoadTestConfig:
    data: Path | None = None
    """Dataset to train on; None: a small procedural one is generated in a temporary folder."""
    clients: int = 16
    """Websocket clients, each in its own thread."""
    uploads_per_client: int = 5
    """Uploads of each client, one after the other (each waits for its answer)."""
    hold_seconds: float = 0.0
    """Each client stays connected (the viewer renders for it at each training step) at least this long."""
    baseline_seconds: float = 30.0
    """Training measured without clients first, for this long."""
    answer_timeout: float = 300.0
    """Longest wait for the answer to one upload."""
    startup_timeout: float = 300.0
    """Longest wait for ns-train's viewer and first steps."""
    deadline: float = 1500.0
    """The whole run stops after this many seconds, answered or not."""
    port: int = 0
    """Viewer port; 0: a free one."""
    timeline_seconds: float = 10.0
    """Interval of the reported (seconds into the load, RSS MiB, threads) samples of the training process."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def png(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


def upload_bytes(kind: str, seed: int) -> bytes:
    """An upload of `kind` (see KINDS)."""
    if kind == "good":
        yy, xx = np.mgrid[:96, :96]
        rgba = np.zeros((96, 96, 4), np.uint8)
        rgba[(yy - 48) ** 2 + (xx - 44 - seed % 8) ** 2 < 30**2] = (200, 60 + seed % 100, 30, 255)
        return png(rgba)
    if kind == "not_an_image":
        return b"this is not an image " * 10
    if kind == "oversized_bytes":
        return os.urandom(17 * 2**20)  # over the viewer's 16 MiB
    if kind == "oversized_pixels":
        return png(np.zeros((4200, 4200), np.uint8))  # a small file of 17.6 Mpx, over 4096^2
    if kind == "transparent":
        return png(np.zeros((64, 64, 4), np.uint8))
    raise ValueError(kind)


class ViewerClient:
    """A websocket client speaking viser's protocol (msgpack messages; the server sends tuples of them)."""

    def __init__(self, port: int, timeout: float = 30.0) -> None:
        from websockets.sync.client import connect

        self.ws = connect(f"ws://{HOST}:{port}", open_timeout=timeout, max_size=None).__enter__()
        self.lock = threading.Lock()
        self.notifications: list[str] = []
        self.received: list[dict] = []
        self.closed = threading.Event()
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()
        # viser counts a browser as connected (and runs its callbacks) from its first camera message on
        self.send({"type": "ViewerCameraMessage", "wxyz": (1.0, 0.0, 0.0, 0.0), "position": (0.0, 0.0, 26.0),
                   "fov": 0.9, "aspect": 1.5, "look_at": (0.0, 0.0, 0.0), "up_direction": (0.0, 1.0, 0.0)})  # fmt: skip

    def _read(self) -> None:
        try:
            while True:
                raw = self.ws.recv()
                batch = msgspec.msgpack.decode(raw)
                for message in batch if isinstance(batch, list) else [batch]:
                    if not isinstance(message, dict):
                        continue
                    with self.lock:
                        if message.get("type") == "NotificationMessage":
                            self.notifications.append(str(message.get("body")))
                        elif message.get("type") in KEPT_MESSAGES:
                            self.received.append(message)
        except Exception:  # noqa: BLE001 - the connection ended
            self.closed.set()

    def wait_for(self, condition, timeout: float, what: str):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self.lock:
                found = condition()
            if found:
                return found
            if self.closed.is_set():
                raise ConnectionError(f"the viewer closed the connection while waiting for {what}")
            time.sleep(0.05)
        raise TimeoutError(f"no {what} within {timeout:.0f} s")

    def upload_button(self, label: str = "Upload image", timeout: float = 30.0) -> str:
        def button():
            kind = "GuiAddUploadButtonMessage"
            return next((m for m in self.received if m.get("type") == kind and m.get("label") == label), None)

        message = self.wait_for(button, timeout, f"upload button {label!r}")
        return message["id"]

    def send(self, message: dict) -> None:
        self.ws.send(msgspec.msgpack.encode(message))

    def upload(self, button: str, name: str, data: bytes, timeout: float) -> str:
        """Upload as viser's browser client does (a start message, then every part at once); return the body of the
        first notification that names `name`."""
        import uuid

        seen = len(self.notifications)
        transfer = str(uuid.uuid4())
        parts = max(1, -(-len(data) // PART_BYTES))
        self.send({"type": "FileTransferStart", "source_component_id": button, "transfer_uuid": transfer,
                   "filename": name, "mime_type": "image/png", "size_bytes": len(data), "part_count": parts})  # fmt: skip
        for i in range(parts):
            self.send({"type": "FileTransferPart", "source_component_id": button, "transfer_uuid": transfer,
                       "part": i, "content": data[i * PART_BYTES : (i + 1) * PART_BYTES]})  # fmt: skip
        return self.wait_for(
            lambda: next((n for n in self.notifications[seen:] if name in n), None), timeout, f"answer to {name}"
        )

    def close(self) -> None:
        self.ws.close()
        self.reader.join(timeout=10)


def answer_kind(body: str) -> str:
    if body.startswith("Reconstructed"):
        return "reconstructed"
    if "refused" in body or "rejected" in body:
        return "refused"
    return "other"


def run_client(port: int, index: int, config: LoadTestConfig, results: list, deadline: float) -> None:
    try:
        client = ViewerClient(port)
    except Exception as err:  # noqa: BLE001 - reported, not raised: the other clients go on
        results.extend({"client": index, "kind": "connect", "answer": None, "error": repr(err)}
                       for _ in range(config.uploads_per_client))  # fmt: skip
        return
    held = time.monotonic() + config.hold_seconds
    try:
        button = client.upload_button()
        # viser handles each message on a thread pool, so an upload sent right after the first camera message can
        # overtake it, reach a browser viser does not know yet and be lost. A browser's user takes longer than this:
        # wait for the LRM viewer's greeting (it points each new browser's camera at the object).
        client.wait_for(lambda: any(m.get("type") == "SetCameraLookAtMessage" for m in client.received), 60,
                        "the viewer's greeting")  # fmt: skip
        for i in range(config.uploads_per_client):
            kind = KINDS[(index + i) % len(KINDS)]
            name = f"c{index:02d}_u{i}_{kind}.png"
            started = time.monotonic()
            entry = {"client": index, "kind": kind, "name": name, "answer": None}
            try:
                timeout = max(1.0, min(config.answer_timeout, deadline - time.monotonic()))
                body = client.upload(button, name, upload_bytes(kind, index * 10 + i), timeout)
                entry.update(answer=answer_kind(body), message=body, seconds=round(time.monotonic() - started, 2))
            except Exception as err:  # noqa: BLE001
                entry["error"] = repr(err)
            results.append(entry)
        while time.monotonic() < min(held, deadline) and not client.closed.is_set():
            time.sleep(0.5)
    finally:
        client.close()


def rss_kib(pid: int) -> tuple[int, int]:
    """(VmRSS, VmHWM) of `pid` in KiB, (0, 0) once it is gone."""
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return 0, 0
    fields = dict(re.findall(r"^(VmRSS|VmHWM):\s+(\d+)", text, re.MULTILINE))
    return int(fields.get("VmRSS", 0)), int(fields.get("VmHWM", 0))


def threads_of(pid: int) -> int:
    """Threads of `pid` (0 once it is gone)."""
    try:
        return len(os.listdir(f"/proc/{pid}/task"))
    except OSError:
        return 0


def steps_done(log: Path) -> int:
    try:
        return sum(1 for _ in log.open())
    except OSError:
        return 0


def step_rate(log: Path, seconds: float) -> tuple[float, int]:
    first, start = steps_done(log), time.monotonic()
    time.sleep(seconds)
    done = steps_done(log) - first
    return done / (time.monotonic() - start), done


def wait_port(port: int, proc: subprocess.Popen, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"ns-train exited with {proc.returncode} before its viewer started")
        try:
            socket.create_connection((HOST, port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.5)
    raise TimeoutError(f"ns-train's viewer did not listen on {HOST}:{port} within {timeout:.0f} s")


def main(config: LoadTestConfig) -> dict:
    started = time.monotonic()
    deadline = started + config.deadline
    with tempfile.TemporaryDirectory(prefix="lrm-viewer-load-") as tmp:
        tmp = Path(tmp)
        data = config.data
        if data is None:
            from lrm_nerfstudio.generate.generate import GenerateConfig
            from lrm_nerfstudio.generate.generate import main as generate

            data = tmp / "ds"
            generate(GenerateConfig(output=data, num_objects=8, num_views=8, resolution=64, seed=0, workers=1))
        port = config.port or free_port()
        log = tmp / "steps" / "objects-rank0.jsonl"
        cmd = [
            str(Path(sys.executable).parent / "ns-train"), "lrm-tiny", "--data", str(data),
            "--output-dir", str(tmp / "outputs"), "--max-num-iterations", "1000000", "--steps-per-save", "1000000",
            "--vis", "viewer", "--viewer.websocket-port", str(port), "--viewer.quit-on-train-completion", "True",
            "--pipeline.datamanager.num-workers", "0", "--pipeline.datamanager.patch-size", "16",
            "--pipeline.object-log-dir", str(log.parent),
        ]  # fmt: skip
        env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
        train_out = (tmp / "ns-train.log").open("w")
        proc = subprocess.Popen(cmd, stdout=train_out, stderr=subprocess.STDOUT, env=env)
        try:
            wait_port(port, proc, config.startup_timeout)
            first_steps = time.monotonic() + config.startup_timeout
            while steps_done(log) < 3 and time.monotonic() < first_steps and proc.poll() is None:
                time.sleep(0.5)
            if steps_done(log) < 3:
                raise RuntimeError("ns-train did not step: " + (tmp / "ns-train.log").read_text()[-2000:])
            baseline_rate, _ = step_rate(log, config.baseline_seconds)
            rss_before = rss_kib(proc.pid)[0]

            results: list[dict] = []
            threads = [threading.Thread(target=run_client, args=(port, i, config, results, deadline), daemon=True)
                       for i in range(config.clients)]  # fmt: skip
            load_start, steps_start, peak_rss = time.monotonic(), steps_done(log), 0
            for thread in threads:
                thread.start()
            timeline: list[tuple[float, float, int]] = []
            while any(t.is_alive() for t in threads) and time.monotonic() < deadline:
                rss = rss_kib(proc.pid)[0]
                peak_rss = max(peak_rss, rss)
                if not timeline or time.monotonic() - load_start >= timeline[-1][0] + config.timeline_seconds:
                    timeline.append((round(time.monotonic() - load_start, 1), round(rss / 1024), threads_of(proc.pid)))
                time.sleep(0.25)
            load_seconds = time.monotonic() - load_start
            load_rate = (steps_done(log) - steps_start) / load_seconds
            for thread in threads:
                thread.join(timeout=1)
            # a load shorter than a step may show none: training still steps if one more comes within a minute
            more = time.monotonic() + 60
            while steps_done(log) <= steps_start and time.monotonic() < more and proc.poll() is None:
                time.sleep(0.5)
            stepped = steps_done(log) > steps_start
            trained_through = proc.poll() is None
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=30)
            train_out.close()
    sent = config.clients * config.uploads_per_client
    answers = [r.get("answer") for r in results]
    report = {
        "clients": config.clients,
        "hold_seconds": config.hold_seconds,
        "uploads_sent": sent,
        "uploads_answered": sum(a in ("reconstructed", "refused") for a in answers),
        "reconstructed": answers.count("reconstructed"),
        "refused": answers.count("refused"),
        "unanswered": [r for r in results if r.get("answer") not in ("reconstructed", "refused")][:10],
        "answers_by_kind": {k: sorted({str(r.get("answer")) for r in results if r.get("kind") == k}) for k in KINDS},
        "slowest_answer_s": max((r.get("seconds", 0) for r in results), default=0),
        "steps_per_s_without_load": round(baseline_rate, 3),
        "steps_per_s_under_load": round(load_rate, 3),
        "load_seconds": round(load_seconds, 1),
        "training_alive_after_load": trained_through,
        "stepped_since_load_start": stepped,
        "rss_mib_before_load": round(rss_before / 1024, 1),
        "peak_rss_mib_under_load": round(peak_rss / 1024, 1),
        "seconds": round(time.monotonic() - started, 1),
        "rss_timeline": timeline,
    }
    print(json.dumps(report))
    return report


def entrypoint() -> None:
    main(tyro.cli(LoadTestConfig))


if __name__ == "__main__":
    entrypoint()
