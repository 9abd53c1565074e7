"""Viewer controls of the LRM pipeline: pick the object to reconstruct, see its source image, re-run the prediction,
upload an image of one's own.

nerfstudio's viewer finds every `ViewerElement` reachable from the pipeline through attributes of `nn.Module`s
(`nerfstudio.viewer.utils.parse_object`), installs it, and wraps its callback so that it runs under the trainer's
lock and is followed by a re-render. The controls therefore live in a parameter-free `nn.Module` held by the
pipeline. Callbacks only change *display* state (the datamanager's display object and the model's display source);
the display triplane is re-predicted lazily, under `no_grad`, by the next render (docs/ARCHITECTURE.md, nerfstudio's traps).
"""

from __future__ import annotations

import base64
import io
import re
import shutil
import tempfile
import threading
import weakref
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np
from nerfstudio.utils.rich_utils import CONSOLE
from nerfstudio.viewer.viewer_elements import (
    ViewerButton,
    ViewerCheckbox,
    ViewerControl,
    ViewerDropdown,
    ViewerElement,
)
from PIL import Image
from torch import Tensor, nn
from viser import ViserServer
from viser._gui_handles import UploadedFile

from lrm_nerfstudio.cameras import WORLD_UP, spherical_eye
from lrm_nerfstudio.data.image_preprocess import ImageInputError, preprocess_image_bytes
from lrm_nerfstudio.viewer_security import delivered_upload, limit_uploads, markdown_text


@runtime_checkable
class DisplayPipeline(Protocol):
    """What the controls use of their pipeline (an `LRMPipeline`; named structurally so that this module, below the
    pipeline in the layers, does not import it)."""

    model: Any
    datamanager: Any

    def show_object(self, ref: str) -> str: ...


SPLITS = ("test", "val", "train")
"""Dropdown order: held-out objects first, as the default display object is."""
MAX_LISTED_PER_SPLIT = 2000
"""A browser dropdown with more entries than this becomes unusable; the rest stay reachable by upload/CLI."""
UPLOAD_MIME_TYPE = "image/*"
"""What the browser's file picker offers; anything else still reaches the server's checks."""
UPLOAD_MAX_BYTES = 16 * 2**20
"""Largest upload accepted; larger ones are refused at their first message, before viser stores any part."""
UPLOAD_MAX_PIXELS = 4096 * 4096
"""Largest width x height accepted, read from the image header before decoding."""
NOTIFICATION_CHARS = 500
"""Longer messages are cut in the notification (the console and `status` keep them whole)."""
UPLOAD_LIMITS = f"Images up to {UPLOAD_MAX_BYTES // 2**20} MiB and {UPLOAD_MAX_PIXELS / 1e6:.1f} Mpx (4096 x 4096)."
"""The limits as the panel states them."""
START_VIEW = (2.6, 30.0, 20.0)
"""(distance, azimuth, elevation in degrees) of a new browser's camera: a three-quarter view of the [-1, 1]^3 box."""
VISER_SCALE = 10.0
"""nerfstudio's viewer draws the scene 10x larger (`nerfstudio.viewer.viewer.VISER_NERFSTUDIO_SCALE_RATIO`)."""


class ViewerMarkdown(ViewerElement[str]):
    """Markdown text in the viewer panel (status messages, the source image as an embedded data-URI PNG).

    viser evaluates markdown as MDX, in which `{...}` runs JavaScript: text from outside (file names, object ids,
    error messages) goes through `markdown_text` first.
    """

    def __init__(self, name: str, content: str = "", visible: bool = True) -> None:
        super().__init__(name, visible=visible)
        self._content = content
        self.viser_server: ViserServer | None = None

    def _create_gui_handle(self, viser_server: ViserServer) -> None:
        self.viser_server = viser_server
        self.gui_handle = viser_server.gui.add_markdown(self._content, visible=self.visible)  # type: ignore[assignment]

    def install(self, viser_server: ViserServer) -> None:
        self._create_gui_handle(viser_server)

    @property
    def content(self) -> str:
        return self._content

    @content.setter
    def content(self, content: str) -> None:
        self._content = content
        if self.gui_handle is not None:
            self.gui_handle.content = content  # type: ignore[union-attr]


class ViewerUpload(ViewerElement[UploadedFile]):
    """A file-upload button (viser's `add_upload_button`); `cb_hook(self)` runs after each upload, `value` is the
    last `UploadedFile` (name, content). Uploads over `max_bytes` are refused before viser stores them, and
    `on_refused(file name, reason)` runs instead."""

    def __init__(
        self,
        name: str,
        cb_hook: Any,
        mime_type: str = "*/*",
        hint: str | None = None,
        max_bytes: int = UPLOAD_MAX_BYTES,
        on_refused: Any = None,
    ) -> None:
        super().__init__(name, cb_hook=cb_hook)
        self.mime_type = mime_type
        self.hint = hint
        self.max_bytes = max_bytes
        self.on_refused = on_refused
        self._delivery = threading.local()

    def _create_gui_handle(self, viser_server: ViserServer) -> None:
        self.gui_handle = viser_server.gui.add_upload_button(  # type: ignore[assignment]
            self.name, mime_type=self.mime_type, hint=self.hint, disabled=self.disabled, visible=self.visible
        )

    def install(self, viser_server: ViserServer) -> None:
        self._create_gui_handle(viser_server)
        self.gui_handle.on_upload(self._received)  # type: ignore[union-attr]
        limit_uploads(self.gui_handle, self.max_bytes, self.on_refused)

    def _received(self, event: Any) -> None:
        # This thread's upload and its browser, for `value` and `client` while `cb_hook` runs (uploads of several
        # browsers can finish at once). `cb_hook` is looked up now: the viewer replaces it after install with its
        # locked, re-rendering wrapper.
        self._delivery.file, self._delivery.client = delivered_upload() or self.gui_handle.value, event.client
        try:
            self.cb_hook(self)
        finally:
            self._delivery.file = self._delivery.client = None

    @property
    def value(self) -> UploadedFile:
        delivered = getattr(self._delivery, "file", None)
        if delivered is not None:
            return delivered
        return self.gui_handle.value if self.gui_handle is not None else UploadedFile("", b"")  # type: ignore[union-attr]

    @property
    def client(self) -> Any:
        """viser ClientHandle of the browser whose upload `cb_hook` is handling (None outside it)."""
        return getattr(self._delivery, "client", None)


class StartView(ViewerControl):
    """Points each newly connected browser at the object: viser's default camera sits inside the scene box, where a
    reconstruction looks like fog."""

    def _setup(self, viewer) -> None:
        super()._setup(viewer)
        self.viser_server.on_client_connect(self.look_at_object)

    @staticmethod
    def look_at_object(client) -> None:
        with client.atomic():
            client.camera.up_direction = WORLD_UP
            client.camera.position = tuple(float(v) * VISER_SCALE for v in spherical_eye(*START_VIEW))
            client.camera.look_at = (0.0, 0.0, 0.0)


def image_data_uri(image: Tensor) -> str:
    """[3, H, W] RGB in [0, 1] -> a PNG data URI."""
    array = (image.detach().float().clamp(0, 1).permute(1, 2, 0).cpu().numpy() * 255).round().astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def _safe_file_name(name: str) -> str:
    """A browser-supplied file name reduced to something safe to create in our own folder."""
    stem = re.sub(r"[^A-Za-z0-9._-]+", "_", Path(name).name).strip("._") or "upload"
    return stem[-80:]


class LRMViewerControls(nn.Module):
    """The LRM controls in nerfstudio's viewer.

    A parameter-free `nn.Module` only so that the viewer's attribute walk reaches the elements; it adds nothing to
    checkpoints. Elements appear in attribute-name order, hence the names.
    """

    def __init__(self, pipeline: DisplayPipeline) -> None:
        super().__init__()
        # Kept out of the module tree: the pipeline already owns this module.
        self.__dict__["_pipeline_ref"] = pipeline
        self._lock = threading.RLock()
        self._upload_dir: Path | None = None
        self._uploads = 0
        self._labels: dict[str, str] = {}  # dropdown label -> object id or image path
        self.status = ""
        """The last status message (also shown in the panel)."""
        self.listed_objects: dict[str, list[str]] = {}
        """Split -> object ids offered in the dropdown."""
        options = self._build_options()
        self.a_object = ViewerDropdown(
            "Object",
            self._label_of(self._datamanager.display_ref, options),
            options,
            cb_hook=lambda element: self.select(element.value),
            hint="Object (split/id) whose reconstruction the viewer shows",
        )
        self.b_source_image = ViewerMarkdown("Source image")
        self.c_refresh = ViewerButton("Re-run prediction", cb_hook=lambda _: self.refresh())
        self.d_upload = ViewerUpload(
            "Upload image",
            cb_hook=lambda element: self.upload(element.value.name, element.value.content, element.client),
            mime_type=UPLOAD_MIME_TYPE,
            hint=f"An RGBA image, or RGB on a plain background: reconstructed from the current weights. {UPLOAD_LIMITS}",
            on_refused=lambda name, reason, client: self._report(f"Upload {name!r} refused: {reason}.", client),
        )
        self.e_status = ViewerMarkdown("Status", markdown_text(f"Upload: {UPLOAD_LIMITS}"))
        # gsplat's CUDA extension is checked when the box is ticked, not here: its first use may compile it
        on_cuda = pipeline.model.device.type == "cuda"
        self.f_splat_preview = ViewerCheckbox(
            "Gaussian preview (gsplat)",
            False,
            disabled=not on_cuda,
            cb_hook=lambda element: self.set_splat_preview(element.value),
            hint=(
                f"Rasterise {pipeline.model.config.preview_num_gaussians:,} Gaussians of the reconstruction with "
                "gsplat instead of volume rendering it"
                if on_cuda
                else "Needs CUDA: gsplat's rasteriser has no CPU kernel, so the viewer volume-renders the triplane"
            ),
        )
        self.start_view = StartView()
        self._show_source()

    # Private on purpose: the viewer's attribute walk follows public nn.Module attributes and would loop back here.
    @property
    def _pipeline(self) -> DisplayPipeline:
        return self.__dict__["_pipeline_ref"]

    @property
    def _datamanager(self):
        return self._pipeline.datamanager

    # ------------------------------------------------------------------------------------------------- options
    def _build_options(self) -> list[str]:
        objects = self._datamanager.list_objects()
        options: list[str] = []
        for split in SPLITS:
            ids = list(objects.get(split, []))[:MAX_LISTED_PER_SPLIT]
            self.listed_objects[split] = ids
            for object_id in ids:
                label = f"{split}/{object_id}"
                self._labels[label] = object_id
                options.append(label)
        return options

    def _label_of(self, ref: str, options: list[str]) -> str:
        """The dropdown label of `ref`, adding an `image/<name>` entry for an image path (inference or upload)."""
        for label, target in self._labels.items():
            if target == ref:
                return label
        label = f"image/{Path(ref).name}"
        self._labels[label] = ref
        options.append(label)
        return label

    # ------------------------------------------------------------------------------------------------- actions
    def select(self, label: str) -> bool:
        """Show the object (or image) behind dropdown entry `label`; False and a status message if that fails."""
        with self._lock:
            ref = self._labels.get(label)
            if ref is None:
                return self._report(f"Unknown entry {label!r}.")
            if ref == self._datamanager.display_ref:
                return True  # also reached when `upload` sets the dropdown to the new entry
            try:
                name = self._pipeline.show_object(ref)
            except Exception as err:  # noqa: BLE001 - the viewer thread must survive any bad object
                return self._report(f"Could not show {label}: {err}")
            self._show_source()
            self._status(f"Showing {name} ({label}), predicted from the current weights.")
            return True

    def refresh(self) -> None:
        """Re-predict the display triplane from the current weights (on the next render)."""
        with self._lock:
            self._pipeline.model.refresh_display()
            self._status(f"Re-running the prediction of {self._datamanager.display_source[2]}.")

    def set_splat_preview(self, on: bool) -> bool:
        """Render the viewer's cameras with gsplat (True) or the volume renderer (False); False and a status message
        when gsplat cannot run here."""
        from lrm_nerfstudio.splat.render import gsplat_unavailable_reason

        with self._lock:
            model = self._pipeline.model
            reason = gsplat_unavailable_reason(model.device) if on else None
            model.splat_preview = on and reason is None
            if reason is not None:
                return self._report(f"No Gaussian preview: {reason}. The viewer keeps volume rendering.")
            self._status(
                f"Gaussian preview: {model.config.preview_num_gaussians:,} Gaussians rasterised by gsplat."
                if on
                else "Volume rendering the triplane."
            )
            return True

    def upload(self, name: str, data: bytes, client: Any = None) -> bool:
        """Reconstruct an uploaded image; on bad input report why and leave the display unchanged. The uploading
        browser (`client`, a viser ClientHandle) gets a notification either way; None notifies every browser of a
        problem."""
        name = name or "upload"
        with self._lock:
            if len(data) > UPLOAD_MAX_BYTES:  # the viewer refuses these before they arrive; this covers direct calls
                return self._report(f"Upload rejected: {name}: {len(data):,} bytes, over the limit of "
                                    f"{UPLOAD_MAX_BYTES:,} bytes", client)  # fmt: skip
            try:
                # Checked in memory first: nothing is written for a bad upload and the message names the upload.
                preprocess_image_bytes(
                    data, name, processor=self._pipeline.model.config.processor, max_pixels=UPLOAD_MAX_PIXELS
                )
                path = self._save_upload(name, data)
                shown = self._pipeline.show_object(str(path))
            except ImageInputError as err:
                return self._report(f"Upload rejected: {err}", client)
            except Exception as err:  # noqa: BLE001 - the viewer thread must survive any upload
                return self._report(f"Upload {name!r} failed: {type(err).__name__}: {err}", client)
            options = list(self.a_object.options)
            label = self._label_of(str(path), options)
            self.a_object.set_options(options)
            self.a_object.value = label  # its callback sees the display already on `path` and does nothing
            self._show_source()
            self._status(f"Showing upload {shown}, predicted from the current weights.")
            if client is not None:
                self._notify([client], f"Reconstructed {name!r}: the viewer shows it.", "green")
            return True

    # ------------------------------------------------------------------------------------------------- helpers
    def _save_upload(self, name: str, data: bytes) -> Path:
        if self._upload_dir is None:
            # The datamanager's display path is a file; uploads live in a private folder removed with this object.
            self._upload_dir = Path(tempfile.mkdtemp(prefix="lrm-viewer-uploads-"))
            weakref.finalize(self, shutil.rmtree, self._upload_dir, True)
        self._uploads += 1
        path = self._upload_dir / f"{self._uploads:04d}_{_safe_file_name(name)}"
        path.write_bytes(data)
        return path

    def _show_source(self) -> None:
        image, _, name = self._datamanager.display_source
        self.b_source_image.content = f"**{markdown_text(name)}**\n\n![source image]({image_data_uri(image)})"

    def _status(self, text: str) -> None:
        """`text` (plain, possibly holding names from outside) as the status, shown literally in the panel."""
        self.status = text
        self.e_status.content = markdown_text(text)

    def _report(self, text: str, client: Any = None) -> bool:
        """Show a problem in the panel and as a notification in browser `client` (None: every open browser); never
        raises."""
        self._status(f"⚠️ {text}")
        server = self.e_status.viser_server
        if client is not None:
            self._notify([client], text, "red")
        elif server is not None:
            self._notify(list(server.get_clients().values()), text, "red")
        return False

    @staticmethod
    def _notify(clients: list, text: str, color: str) -> None:
        """A notification (shown as plain text by viser's client) in each of `clients`; never raises."""
        for client in clients:
            try:
                client.add_notification("LRM viewer", text[:NOTIFICATION_CHARS], auto_close=8000, color=color)
            except Exception as err:  # noqa: BLE001 - the message is in the panel already
                CONSOLE.print(f"[yellow]LRM viewer: could not notify a browser: {err}")
