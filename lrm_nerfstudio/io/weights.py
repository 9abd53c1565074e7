"""Weights files, format v2: safetensors tensors plus plain JSON metadata. Loading one runs no code.

A weights file is what people share: `lrm-reconstruct --weights FILE`, `lrm_nerfstudio.from_pretrained(FILE)` and
`ns-train ... --pipeline.model.init-from FILE` all take one. Its safetensors metadata (strings only) holds:

    format       "lrm-nerfstudio-weights"
    version      "2"
    method       the registered method it trains with, e.g. "lrm-tiny", "lrm-triposr"
    model        JSON of the model config (LRMModelConfig as plain data: no class paths, no YAML)
    processor    JSON of the processor config: how a source image is prepared for this model
    source       JSON {"family": "trained" | "triposr" | "openlrm", "step": N, "sha256": hash of the imported
                 checkpoint file or null}
    written_by   JSON {"lrm_nerfstudio": version, "torch": version, "transformers": version}

The tensors' names are the project's own (io/state_keys.py), not transformers' internal module names.

Loading parses the JSON and checks it field by field against the config dataclasses (io/plain_data.py); any
unknown, missing or ill-typed field, any other metadata key and any newer version is a `ModelLoadError` naming the
file and the field. Version-1 files (whose metadata was pickled-class YAML, which can run code) are refused with
the command that upgrades them.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from dataclasses import fields as data_fields
from importlib import metadata as package_metadata
from pathlib import Path
from typing import Any, Literal

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import Tensor

from lrm_nerfstudio.io.atomic import atomic_write
from lrm_nerfstudio.io.checkpoints import ModelLoadError
from lrm_nerfstudio.io.plain_data import PlainDataError, from_plain, to_plain
from lrm_nerfstudio.io.state_keys import StateKeyError, stable_state

WEIGHTS_FORMAT = "lrm-nerfstudio-weights"
"""Value of the `format` metadata key."""
WEIGHTS_VERSION = 2
"""Format version written (and the newest read)."""
METADATA_KEYS = ("format", "version", "method", "model", "processor", "source", "written_by")
"""Every metadata key of a v2 file, in order; no other key is accepted."""
UPGRADE_FLAG = "--trust-embedded-yaml"
"""The flag `lrm-export-weights --upgrade` needs: upgrading evaluates a v1 file's YAML."""
_METHOD_NAME = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}$")


@dataclass
class WeightsSource:
    """Where a file's weights came from."""

    family: Literal["trained", "triposr", "openlrm"]
    """trained: an ns-train run of this project; triposr / openlrm: imported from that release."""
    step: int
    """Training step of the weights (0 for an import)."""
    sha256: str | None
    """SHA-256 of the imported release checkpoint file (None for trained weights)."""


@dataclass
class WrittenBy:
    """The versions of the software that wrote a file."""

    lrm_nerfstudio: str
    """lrm-nerfstudio."""
    torch: str
    """PyTorch."""
    transformers: str
    """transformers (whose ViT / DINOv2 the encoder is)."""


@dataclass
class Weights:
    """The contents of a weights file."""

    model: Any
    """Model config (an instance of the model type given to `load_weights`)."""
    processor: Any
    """Processor config (an instance of the processor type given to `load_weights`)."""
    method: str
    """Registered method the model trains with."""
    source: WeightsSource
    """Where the weights came from."""
    written_by: WrittenBy
    """Software versions that wrote the file."""
    state: dict[str, Tensor]
    """Tensors under their stable names (io/state_keys.py: `load_stable_state` puts them into a model)."""


def _version(package: str) -> str:
    try:
        return package_metadata.version(package)
    except package_metadata.PackageNotFoundError:  # pragma: no cover - run from a source tree without metadata
        return "unknown"


def written_by() -> WrittenBy:
    """The versions running now."""
    return WrittenBy(_version("lrm-nerfstudio"), torch.__version__, _version("transformers"))


def sha256_of(path: Path, chunk: int = 1 << 24) -> str:
    """Hex SHA-256 of a file, read in chunks."""
    import hashlib

    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def save_weights(
    path: Path, *, model: Any, processor: Any, method: str, source: WeightsSource, state: dict[str, Tensor]
) -> Path:
    """Write a v2 weights file atomically: `state` (model state-dict keys, stored under stable names) and the
    configs as plain JSON."""
    if not _METHOD_NAME.match(method):
        raise ValueError(f"method name {method!r} is not a registered method's name")
    # clone: safetensors refuses tensors that share storage, and wants them contiguous
    tensors = {key: value.detach().to("cpu").contiguous().clone() for key, value in stable_state(state).items()}
    meta = {
        "format": WEIGHTS_FORMAT,
        "version": str(WEIGHTS_VERSION),
        "method": method,
        "model": json.dumps(_without_processor(to_plain(model))),
        "processor": json.dumps(to_plain(processor)),
        "source": json.dumps(to_plain(source)),
        "written_by": json.dumps(to_plain(written_by())),
    }
    return atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata=meta))


def _field_names(cls: type) -> set[str]:
    return {f.name for f in data_fields(cls)}


def _without_processor(model: dict[str, Any]) -> dict[str, Any]:
    """The model config's JSON less its processor, which has a metadata field of its own."""
    return {key: value for key, value in model.items() if key != "processor"}


def upgrade_command(path: Path | str) -> str:
    """The command that converts v1 file `path` to v2."""
    return f"lrm-export-weights --upgrade {path} --output NEW.safetensors {UPGRADE_FLAG}"


def read_safetensors(path: Path) -> tuple[dict[str, str], dict[str, Tensor]]:
    """(metadata, tensors) of any safetensors file; nothing in the metadata is interpreted.

    Raises:
        ModelLoadError: missing file or not safetensors.
    """
    path = Path(path)
    if not path.is_file():
        raise ModelLoadError(f"{path}: weights file not found")
    try:
        with safe_open(str(path), framework="pt", device="cpu") as fh:
            meta = fh.metadata() or {}
            state = {key: fh.get_tensor(key) for key in fh.keys()}  # noqa: SIM118 (safe_open is not iterable)
    except Exception as err:  # safetensors raises its own error types for bad headers
        raise ModelLoadError(f"{path}: not a safetensors file ({type(err).__name__}: {err})") from err
    return meta, state


def check_header(path: Path, meta: dict[str, str]) -> int:
    """The format version of a file's metadata, if this code reads it (v2), else a `ModelLoadError`."""
    if meta.get("format") != WEIGHTS_FORMAT:
        raise ModelLoadError(
            f"{path}: not an lrm-nerfstudio weights file (metadata 'format' is {meta.get('format')!r:.60}; write "
            "one with lrm-export-weights or lrm-import-weights)"
        )
    raw = meta.get("version", "")
    if not re.fullmatch(r"[0-9]{1,6}", raw):
        raise ModelLoadError(f"{path}: field version: expected an integer, got {raw!r:.60}")
    version = int(raw)
    if version == 1 or "trainer_config_yaml" in meta:
        raise ModelLoadError(
            f"{path}: a weights file of format version 1, whose metadata is YAML naming Python classes: loading "
            "it can run code, so it is not loaded. If you trust the file, convert it once with: "
            + upgrade_command(path)
        )
    if version > WEIGHTS_VERSION:
        raise ModelLoadError(
            f"{path}: weights format version {version} is newer than this lrm-nerfstudio reads (up to "
            f"{WEIGHTS_VERSION}); upgrade lrm-nerfstudio"
        )
    if version < WEIGHTS_VERSION:
        raise ModelLoadError(f"{path}: field version: unknown format version {version}")
    return version


def load_weights(path: Path, model_type: type, processor_type: type) -> Weights:
    """Read a v2 weights file; the model and processor configs are checked against `model_type` and
    `processor_type` (dataclasses). Only JSON is parsed: nothing in the file is imported or evaluated.

    Raises:
        ModelLoadError: missing or non-safetensors file, v1 or newer version, or metadata that does not fit;
            the message starts with the path and names the field.
    """
    path = Path(path)
    meta, state = read_safetensors(path)
    check_header(path, meta)
    unknown = sorted(set(meta) - set(METADATA_KEYS))
    if unknown:
        raise ModelLoadError(f"{path}: unknown metadata field {unknown[0]!r:.60} (not part of format v2)")
    missing = [key for key in METADATA_KEYS if key not in meta]
    if missing:
        raise ModelLoadError(f"{path}: metadata field {missing[0]!r} is missing")
    method = meta["method"]
    if not _METHOD_NAME.match(method):
        raise ModelLoadError(f"{path}: field method: {method!r:.60} is not a method name")
    sections: dict[str, Any] = {}
    for key, cls in (("processor", processor_type), ("model", model_type), ("source", WeightsSource),
                     ("written_by", WrittenBy)):  # fmt: skip
        try:
            data = json.loads(meta[key])
        except (json.JSONDecodeError, RecursionError) as err:
            raise ModelLoadError(f"{path}: field {key}: not JSON ({err})") from err
        with_processor = key == "model" and isinstance(data, dict) and "processor" in _field_names(model_type)
        if with_processor:  # the model config holds its processor; the file keeps it in a field of its own
            if "processor" in data:
                raise ModelLoadError(f"{path}: field model.processor: not allowed (the processor is its own field)")
            data["processor"] = json.loads(meta["processor"])
        try:
            sections[key] = from_plain(cls, data, key)
        except PlainDataError as err:
            raise ModelLoadError(f"{path}: {err}") from err
    try:
        stable_state(state)  # every tensor name is already stable: a file with transformers' names is foreign
    except StateKeyError as err:
        raise ModelLoadError(f"{path}: {err.args[0]}") from err
    return Weights(method=method, state=state, **sections)
