"""Guards around nerfstudio's viewer (viser 0.2.7, pinned by nerfstudio 1.1.5), installed when the plugin loads.

- **Bind address.** `ns-viewer --load-config` replaces the run's viewer settings with nerfstudio's defaults, which
  listen on 0.0.0.0. The plugin loads (entry-point discovery) before `ns-viewer` defines its viewer options, so
  moving the default of `ViewerConfig.websocket_host` to 127.0.0.1 makes `ns-viewer` local unless the user passes
  `--viewer.websocket-host 0.0.0.0`. The LRM methods set 127.0.0.1 themselves for `ns-train`.
- **HTTP root.** viser's HTTP handler joins the request path onto its client build folder with no check, so a
  `GET /../../etc/passwd` returned the file. Its root becomes a path whose `/` never leaves the folder; anything
  outside maps to a missing file, which viser answers with 404.
- **Upload size.** viser keeps every part of an upload in memory until the declared size has arrived, with no
  limit. Uploads over a limit are refused at their first message, before any part is stored; parts beyond the
  declared size, out-of-range or repeated parts end the transfer; transfers of clients that left are dropped; and
  at most `MAX_UPLOADS_IN_FLIGHT` transfers are held at once. The owner of an upload button is told of each
  refusal (`limit_uploads`).
- **Upload order.** viser hands every incoming message to its own thread of a pool, so a transfer's part can be
  handled before its start, which viser then drops: the upload was never answered (3 of 80 in the 16-browser load
  test). A part of a transfer not yet started waits up to `PART_WAIT_SECONDS` for its start.
"""

from __future__ import annotations

import functools
import os
import string
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

LOCALHOST = "127.0.0.1"
DEFAULT_MAX_UPLOAD_BYTES = 16 * 2**20
"""Limit for upload buttons that did not set their own (`limit_uploads`)."""
MAX_UPLOADS_IN_FLIGHT = 16
"""Transfers held at once across all browsers; bounds upload memory at this times the largest limit."""
PART_WAIT_SECONDS = 5.0
"""Longest wait of a part for the start of its transfer (handled on another of viser's threads)."""
OUTSIDE_ROOT = "__outside_the_viewer_root__"
"""The missing file that a path outside viser's client folder maps to."""

RefusalCallback = Callable[[str, str, Any], None]
"""(browser-supplied file name, reason, viser ClientHandle of the uploader or None) of a refused upload."""

_upload_limits: dict[str, tuple[int, RefusalCallback | None]] = {}
_delivery = threading.local()
_installed = False
_install_lock = threading.Lock()
_transfer_started = threading.Condition()
"""Notified whenever a transfer starts or is refused, for the parts that overtook its start."""
_ended_transfers: dict[str, None] = {}
"""Transfers refused or ended, oldest first (the last 4096): their late parts are dropped without a wait."""


# ------------------------------------------------------------------------------------------------------ markdown
_MARKDOWN_SPECIAL = frozenset(string.punctuation)
"""Every ASCII punctuation character: CommonMark lets any of them be backslash-escaped, and MDX reads `{`, `}`, `<`
and `>` as JavaScript expressions and JSX unless escaped."""


def markdown_text(text: str, limit: int = 300) -> str:
    """`text` as markdown that viser's MDX renderer shows literally: no expression is evaluated, no tag, link or
    image is made. Line breaks and control characters become spaces; over `limit` characters it is cut with '…'."""
    flat = "".join(" " if (ch.isspace() or not ch.isprintable()) else ch for ch in str(text)).strip()
    if len(flat) > limit:
        flat = flat[: limit - 1] + "…"
    return "".join("\\" + ch if ch in _MARKDOWN_SPECIAL else ch for ch in flat)


# ---------------------------------------------------------------------------------------------------- bind address
def bind_viewers_to_localhost_by_default() -> None:
    """Make 127.0.0.1 the default `websocket_host` of viewer configs declared from now on: `ns-viewer`'s options
    class is declared after the plugin is discovered, so its `--viewer.websocket-host` defaults to 127.0.0.1."""
    from nerfstudio.configs.base_config import ViewerConfig

    ViewerConfig.__dataclass_fields__["websocket_host"].default = LOCALHOST
    ViewerConfig.websocket_host = LOCALHOST  # the class attribute dataclass left there, read by subclasses' docs


# ------------------------------------------------------------------------------------------------------ HTTP root
class ConfinedRoot(type(Path())):  # type: ignore[misc]  # the concrete Path class of this OS (3.10/3.11 idiom)
    """A folder whose `/` never leaves it: a child that resolves (symlinks followed) outside the folder becomes the
    missing file `OUTSIDE_ROOT` inside it."""

    def __truediv__(self, key: Any) -> Path:
        root = Path(os.fspath(self))
        child = root / key
        if not child.resolve().is_relative_to(root.resolve()):
            return root / OUTSIDE_ROOT
        return child


def _confine_http_root() -> None:
    from viser.infra import _infra

    original = _infra.WebsockServer.__init__

    @functools.wraps(original)
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        original(self, *args, **kwargs)
        if self._http_server_root is not None:
            self._http_server_root = ConfinedRoot(self._http_server_root)

    _infra.WebsockServer.__init__ = __init__


# -------------------------------------------------------------------------------------------------------- uploads
def limit_uploads(handle: Any, max_bytes: int, on_refused: RefusalCallback | None = None) -> None:
    """Refuse uploads to viser upload button `handle` over `max_bytes`; `on_refused(file name, reason, client)` runs
    on viser's thread for each refusal."""
    _upload_limits[handle._impl.id] = (int(max_bytes), on_refused)


def delivered_upload() -> Any:
    """The `UploadedFile` whose upload callbacks run on this thread, or None.

    viser stores a finished upload on the button (shared by every browser) and then runs its callbacks; with two
    browsers uploading at once, the button's value can already be the other upload. This one is this thread's.
    """
    return getattr(_delivery, "file", None)


def _human_bytes(n: int) -> str:
    return f"{n / 2**20:.1f} MiB" if n >= 2**20 else f"{n:,} bytes"


def _guard_uploads() -> None:
    from viser import _messages
    from viser._gui_api import GuiApi
    from viser._gui_handles import UploadedFile

    start, part = GuiApi._handle_file_transfer_start, GuiApi._handle_file_transfer_part

    def refuse(api: GuiApi, client_id: int, message: Any, name: str, size: int, reason: str) -> None:
        """Tell the browser the transfer is over (it re-enables its button) and the button's owner why."""
        ended(message.transfer_uuid)
        _, on_refused = _upload_limits.get(message.source_component_id, (0, None))
        client = api._owner.get_clients().get(client_id) if hasattr(api._owner, "get_clients") else api._owner
        try:
            if client is not None:
                client._websock_connection.queue_message(
                    _messages.FileTransferPartAck(
                        source_component_id=message.source_component_id,
                        transfer_uuid=message.transfer_uuid,
                        transferred_bytes=size,
                        total_bytes=size,
                    )
                )
        finally:
            if on_refused is not None:
                on_refused(name, reason, client)

    def ended(transfer: str) -> None:
        with _transfer_started:
            _ended_transfers[transfer] = None
            while len(_ended_transfers) > 4096:
                del _ended_transfers[next(iter(_ended_transfers))]
            _transfer_started.notify_all()

    @functools.wraps(start)
    def handle_start(self: GuiApi, client_id: int, message: Any) -> None:
        if message.source_component_id not in self._gui_input_handle_from_id:
            return
        states = self._current_file_upload_states
        clients = self._owner.get_clients() if hasattr(self._owner, "get_clients") else None
        if clients is not None:  # transfers of browsers that left never finish
            # (a state without a client id is being started on another thread right now)
            for uuid in [u for u, s in list(states.items()) if s.get("lrm_client_id", client_id) not in clients]:
                states.pop(uuid, None)
        max_bytes, _ = _upload_limits.get(message.source_component_id, (DEFAULT_MAX_UPLOAD_BYTES, None))
        size, count = int(message.size_bytes), int(message.part_count)
        name = str(message.filename)
        if size > max_bytes:
            return refuse(self, client_id, message, name, size,
                          f"{_human_bytes(size)}, over the limit of {_human_bytes(max_bytes)}")  # fmt: skip
        if size <= 0 or count <= 0 or count > size:
            return refuse(self, client_id, message, name, size, f"an empty or malformed upload ({size} bytes)")
        if len(states) >= MAX_UPLOADS_IN_FLIGHT:
            return refuse(self, client_id, message, name, size,
                          f"the viewer is receiving {len(states)} uploads already; try again in a moment")  # fmt: skip
        start(self, client_id, message)
        if message.transfer_uuid in states:
            states[message.transfer_uuid]["lrm_client_id"] = client_id  # type: ignore[typeddict-unknown-key]
        with _transfer_started:
            _transfer_started.notify_all()

    @functools.wraps(part)
    def handle_part(self: GuiApi, client_id: int, message: Any) -> None:
        states, transfer = self._current_file_upload_states, message.transfer_uuid
        if transfer not in states and transfer not in _ended_transfers:  # its start may not have been handled yet
            with _transfer_started:
                _transfer_started.wait_for(lambda: transfer in states or transfer in _ended_transfers,
                                           timeout=PART_WAIT_SECONDS)  # fmt: skip
        state = states.get(transfer)
        if state is None:
            return
        if (
            state.get("lrm_client_id", client_id) != client_id
            or not 0 <= int(message.part) < state["part_count"]
            or message.part in state["parts"]
            or state["transferred_bytes"] + len(message.content) > state["total_bytes"]
        ):
            self._current_file_upload_states.pop(message.transfer_uuid, None)
            return refuse(self, client_id, message, state["filename"], state["total_bytes"],
                          "its parts do not add up to the size it declared")  # fmt: skip
        if state["transferred_bytes"] + len(message.content) < state["total_bytes"]:
            return part(self, client_id, message)
        # The last part: viser joins the parts, stores the file on the button and runs its callbacks on this thread.
        parts = {**state["parts"], message.part: message.content}
        if len(parts) != state["part_count"]:
            self._current_file_upload_states.pop(message.transfer_uuid, None)
            return refuse(self, client_id, message, state["filename"], state["total_bytes"],
                          "its parts do not add up to the size it declared")  # fmt: skip
        _delivery.file = UploadedFile(state["filename"], b"".join(parts[i] for i in range(len(parts))))
        try:
            part(self, client_id, message)
        finally:
            _delivery.file = None

    GuiApi._handle_file_transfer_start = handle_start
    GuiApi._handle_file_transfer_part = handle_part


def install_viewer_guards() -> None:
    """Install the three guards (idempotent). Called when the plugin's method configs load."""
    global _installed
    with _install_lock:
        if _installed:
            return
        bind_viewers_to_localhost_by_default()
        _confine_http_root()
        _guard_uploads()
        _installed = True
