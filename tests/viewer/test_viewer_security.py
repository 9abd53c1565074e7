"""The viewer's guards (lrm_nerfstudio/viewer_security.py) against the real servers: `ns-viewer` on a saved run
listens on 127.0.0.1 only and serves nothing outside viser's client folder; viser's upload protocol refuses
oversized or inconsistent uploads before storing them, with a message to the uploader; untrusted text reaches the
MDX renderer escaped; dataset ids are plain folder names."""

from __future__ import annotations

import json
import re
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import viser
from lrm_run_helpers import load_script, save_tiny_run, tool
from viser import _messages

import lrm_nerfstudio.lrm_config  # noqa: F401 - the plugin's registration installs the guards
from lrm_nerfstudio.data.dataset_format import DatasetFormatError, read_dataset_json
from lrm_nerfstudio.viewer_controls import UPLOAD_MAX_BYTES, ViewerUpload
from lrm_nerfstudio.viewer_security import OUTSIDE_ROOT, ConfinedRoot, markdown_text

load_test = load_script("viewer_load_test")
HOST = "127.0.0.1"


def http_get(port: int, path: str) -> tuple[int, bytes]:
    """A raw HTTP/1.1 GET of `path` exactly as written (no client normalises the `../`)."""
    with socket.create_connection((HOST, port), timeout=10) as conn:
        conn.sendall(f"GET {path} HTTP/1.1\r\nHost: {HOST}\r\nConnection: close\r\n\r\n".encode())
        data = b""
        while chunk := conn.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split()[1]), body


def escape_path(target: Path) -> str:
    """A request path that climbs out of any folder and down to `target`."""
    return "/" + "../" * 40 + str(target.resolve()).lstrip("/")


@pytest.fixture()
def server():
    server = viser.ViserServer(host=HOST, port=load_test.free_port(), verbose=False)
    yield server
    server.stop()


# ------------------------------------------------------------------------------------------------------ markdown
@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("{globalThis.X=1}.png", r"\{globalThis\.X\=1\}\.png"),
        ("<img src=x onerror=alert(1)>", r"\<img src\=x onerror\=alert\(1\)\>"),
        ("![a](/etc/hostname)", r"\!\[a\]\(\/etc\/hostname\)"),
        ("a\nb\r\n# c\x00", r"a b  \# c"),
        ("plain words 42", "plain words 42"),
    ],
)
def test_markdown_text_escapes_what_mdx_would_read(text, expected):
    assert markdown_text(text) == expected


def test_markdown_text_is_cut_at_the_limit():
    assert markdown_text("x" * 500, limit=10) == "x" * 9 + "…"


# ------------------------------------------------------------------------------------------------------ HTTP root
def test_http_server_refuses_paths_outside_its_root(server, tmp_path):
    secret = tmp_path / "secret.txt"
    secret.write_text("do not serve me")
    port = server.get_port()
    status, body = http_get(port, escape_path(secret))
    assert status == 404 and b"do not serve me" not in body
    status, body = http_get(port, "/")
    assert status == 200 and b"<html" in body.lower()
    asset = next((Path(viser.__file__).parent / "client" / "build" / "assets").glob("*.js"))
    assert http_get(port, f"/assets/{asset.name}")[0] == 200
    assert http_get(port, f"/assets/../assets/{asset.name}")[0] == 200  # `..` that stays inside is fine


def test_confined_root_refuses_symlinks_out(tmp_path):
    root = tmp_path / "root"
    (root / "sub").mkdir(parents=True)
    (root / "sub" / "a.txt").write_text("a")
    (tmp_path / "outside.txt").write_text("o")
    (root / "link.txt").symlink_to(tmp_path / "outside.txt")
    confined = ConfinedRoot(root)
    assert confined / "sub/a.txt" == root / "sub" / "a.txt"
    for escape in ("link.txt", "../outside.txt", "sub/../../outside.txt", str(tmp_path / "outside.txt")):
        assert confined / escape == root / OUTSIDE_ROOT, escape


# ------------------------------------------------------------------------------------------------------ ns-viewer
def listening_addresses(port: int) -> set[str]:
    """Local addresses (hex, as in /proc/net/tcp*) of every socket listening on `port`."""
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            address, hex_port = fields[1].split(":")
            if fields[3] == "0A" and int(hex_port, 16) == port:
                found.add(address)
    return found


@pytest.mark.slow
def test_ns_viewer_listens_on_localhost_only_and_serves_no_outside_file(procedural_dataset, tmp_path):
    config = save_tiny_run(procedural_dataset, tmp_path / "run")
    port = load_test.free_port()
    log = (tmp_path / "ns-viewer.log").open("w")
    proc = subprocess.Popen([tool("ns-viewer"), "--load-config", str(config), "--viewer.websocket-port", str(port)],
                            stdout=log, stderr=subprocess.STDOUT)  # fmt: skip
    try:
        deadline = time.monotonic() + 300
        while not listening_addresses(port):
            assert proc.poll() is None, (tmp_path / "ns-viewer.log").read_text()[-3000:]
            assert time.monotonic() < deadline, "ns-viewer did not listen within 300 s"
            time.sleep(0.5)
        assert listening_addresses(port) == {"0100007F"}  # 127.0.0.1 only: not 0.0.0.0, not ::
        status, body = http_get(port, escape_path(Path("/etc/hostname")))
        assert status == 404 and body == b"404"
        assert http_get(port, "/")[0] == 200
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        log.close()


def test_ns_viewer_help_shows_the_localhost_default():
    out = subprocess.run([tool("ns-viewer"), "--help"], capture_output=True, text=True, timeout=300, check=True)
    text = " ".join(out.stdout.split())
    assert "--viewer.websocket-host STR" in text and "(default: 127.0.0.1)" in text.split("--viewer.websocket-host")[1]


# -------------------------------------------------------------------------------------------------------- uploads
@pytest.fixture()
def upload_button(server):
    """A ViewerUpload on a real viser server, recording what reaches its callbacks."""
    seen: dict[str, list] = {"uploads": [], "refusals": []}
    element = ViewerUpload(
        "Upload image",
        cb_hook=lambda e: (
            seen["uploads"].append((e.value.name, len(e.value.content))),
            e.client.add_notification("t", f"Received {e.value.name}"),
        ),
        on_refused=lambda name, reason, client: (
            seen["refusals"].append((name, reason)),
            client.add_notification("t", f"Upload {name!r} refused: {reason}"),
        ),
        max_bytes=1000,
    )
    element.install(server)
    client = load_test.ViewerClient(server.get_port())
    yield server, element, client, seen
    client.close()


def test_oversized_upload_is_refused_before_it_is_stored(upload_button):
    server, _, client, seen = upload_button
    button = client.upload_button()
    answer = client.upload(button, "big.png", b"x" * 5000, timeout=20)
    assert "big.png" in answer and "over the limit of 1,000 bytes" in answer
    assert seen == {"uploads": [], "refusals": [("big.png", "5,000 bytes, over the limit of 1,000 bytes")]}
    assert not server.gui._current_file_upload_states  # nothing held
    assert client.upload(button, "ok.png", b"y" * 900, timeout=20) == "Received ok.png"  # the button still works
    assert seen["uploads"] == [("ok.png", 900)]


def test_upload_larger_than_declared_is_dropped(upload_button):
    server, _, client, seen = upload_button
    button = client.upload_button()
    client.send({"type": "FileTransferStart", "source_component_id": button, "transfer_uuid": "u1",
                 "filename": "liar.png", "mime_type": "image/png", "size_bytes": 10, "part_count": 1})  # fmt: skip
    client.send({"type": "FileTransferPart", "source_component_id": button, "transfer_uuid": "u1", "part": 0,
                 "content": b"z" * 900})  # fmt: skip
    answer = client.wait_for(lambda: next((n for n in client.notifications if "liar.png" in n), None), 20, "refusal")
    assert "do not add up" in answer and seen["uploads"] == []
    assert not server.gui._current_file_upload_states


def test_upload_within_the_limit_reaches_the_callback(upload_button):
    _, element, client, seen = upload_button
    button = client.upload_button()
    client.send({"type": "FileTransferStart", "source_component_id": button, "transfer_uuid": "u2",
                 "filename": "small.png", "mime_type": "image/png", "size_bytes": 900, "part_count": 2})  # fmt: skip
    for part in range(2):
        client.send({"type": "FileTransferPart", "source_component_id": button, "transfer_uuid": "u2",
                     "part": part, "content": b"s" * 450})  # fmt: skip
    client.wait_for(lambda: seen["uploads"], 20, "the upload callback")
    assert seen == {"uploads": [("small.png", 900)], "refusals": []}
    assert element.client is None  # only set while the callback runs


def test_part_that_overtakes_its_start_still_arrives(upload_button):
    """viser handles each message on its own pool thread, so a part can be handled before its transfer's start."""
    server, _, client, seen = upload_button
    button = client.upload_button()
    (client_id,) = client.wait_for(lambda: list(server.get_clients()), 20, "the server to know the client")
    start = _messages.FileTransferStart(source_component_id=button, transfer_uuid="u3", filename="early.png",
                                        mime_type="image/png", size_bytes=900, part_count=1)  # fmt: skip
    part = _messages.FileTransferPart(source_component_id=button, transfer_uuid="u3", part=0, content=b"e" * 900)
    early = threading.Thread(target=server.gui._handle_file_transfer_part, args=(client_id, part))
    early.start()
    time.sleep(0.5)  # the part's thread is first
    server.gui._handle_file_transfer_start(client_id, start)
    early.join(timeout=30)
    assert seen == {"uploads": [("early.png", 900)], "refusals": []}
    assert not server.gui._current_file_upload_states


def test_the_panel_states_the_upload_limits(procedural_dataset):
    from conftest import tiny_trainer_config

    pipeline = tiny_trainer_config(procedural_dataset).pipeline.setup(device="cpu", test_mode="val")
    controls = pipeline.viewer_controls
    assert "16 MiB" in controls.e_status.content and "4096 x 4096" in controls.e_status.content
    assert "16 MiB" in controls.d_upload.hint
    assert controls.d_upload.max_bytes == UPLOAD_MAX_BYTES
    assert not controls.upload("big.png", b"\0" * (UPLOAD_MAX_BYTES + 1))
    assert "over the limit" in controls.status and "big.png" in controls.status
    assert not controls.upload("{globalThis.X=1}.png", b"not an image")
    assert "{globalThis.X=1}.png" in controls.status  # the plain message keeps the name
    shown = controls.e_status.content
    assert r"\{globalThis\.X\=1\}\.png" in shown and not re.search(r"(?<!\\)[{}<>]", shown)  # all escaped


# ------------------------------------------------------------------------------------------------------ dataset ids
@pytest.mark.parametrize("oid", ["{globalThis.X=1}", "<img src=x>", "a b", "(x)", ".hidden", "x" * 129])
def test_dataset_ids_must_be_plain_folder_names(tmp_path, oid):
    (tmp_path / "dataset.json").write_text(json.dumps({"format": "lrm-multiview", "splits": {"train": [oid]}}))
    with pytest.raises(DatasetFormatError, match="plain folder name"):
        read_dataset_json(tmp_path)


# ------------------------------------------------------------------------------------------------------ load test
@pytest.mark.slow
def test_short_load_test_answers_every_upload_while_training_steps():
    proc = subprocess.run(
        [sys.executable, str(load_test.__file__), "--clients", "4", "--uploads-per-client", "2", "--baseline-seconds", "8",
         "--hold-seconds", "5", "--deadline", "500"],
        capture_output=True, text=True, timeout=700, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    assert report["uploads_sent"] == report["uploads_answered"] == 8, report["unanswered"]
    assert report["reconstructed"] >= 1 and report["refused"] >= 1
    assert report["answers_by_kind"]["oversized_bytes"] == ["refused"]
    assert report["training_alive_after_load"] and report["stepped_since_load_start"]
    assert 0 < report["peak_rss_mib_under_load"] < 8192
    assert report["hold_seconds"] == 5 and report["rss_timeline"][0][1] > 0  # (seconds, MiB, threads) samples
