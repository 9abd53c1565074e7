"""What every importer shares: strict key mapping with shape checks, and errors that name the file and key."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from lrm_nerfstudio.io.checkpoints import ModelLoadError
from lrm_nerfstudio.io.state_keys import to_stable
from lrm_nerfstudio.model.build import inference_config, new_model

FINETUNE_RAYS_PER_CHUNK = 1 << 13
"""Rays per chunk of an imported model's full-image renders (its methods' setting)."""


class WeightsImportError(ModelLoadError):
    """A released folder, config or checkpoint that cannot be imported; the message starts with the path."""


class StateMapper:
    """Builds the project's state dict from a source state dict, one source key at a time.

    Every source key must be consumed (`take`) or explicitly dropped (`drop`); `finish` then checks that the
    result has exactly the keys and shapes of the target model. Nothing is ever loaded partially.
    """

    def __init__(self, source: dict[str, Tensor], name: str) -> None:
        self.source = source
        self.name = name
        self.out: dict[str, Tensor] = {}
        self.origin: dict[str, str] = {}
        """Target key -> the source key(s) it came from (for error messages)."""
        self._used: set[str] = set()

    def take(self, key: str) -> Tensor:
        """The source tensor `key`, marked as used."""
        if key not in self.source:
            raise WeightsImportError(f"{self.name}: missing key {key!r} (not a complete checkpoint of this model?)")
        self._used.add(key)
        return self.source[key]

    def has(self, key: str) -> bool:
        """Whether the source holds `key`."""
        return key in self.source

    def drop(self, key: str) -> None:
        """Consume a source key that the project's model does not need (e.g. an unused pooler)."""
        self.take(key)

    def put(self, target: str, tensor: Tensor, source: str) -> None:
        """Store `tensor` as the target key `target`, remembering which source key(s) it came from."""
        self.out[target] = tensor
        self.origin[target] = source

    def copy(self, source: str, target: str, transform: Callable[[Tensor], Tensor] | None = None) -> None:
        """`put(target, transform(take(source)))`."""
        tensor = self.take(source)
        self.put(target, transform(tensor) if transform is not None else tensor, source)

    def copy_prefix(self, source_prefix: str, target_prefix: str, names: Iterable[str]) -> None:
        """Copy `source_prefix + n` to `target_prefix + n` for each name."""
        for n in names:
            self.copy(source_prefix + n, target_prefix + n)

    def finish(self, expected: dict[str, torch.Size | tuple[int, ...]]) -> dict[str, Tensor]:
        """The mapped state dict, checked against the target model's keys and shapes.

        Raises:
            WeightsImportError: an unexpected source key, a mapped tensor of the wrong shape, or a target key that
                no source key provides.
        """
        unexpected = sorted(set(self.source) - self._used)
        if unexpected:
            more = f" and {len(unexpected) - 1} more" if len(unexpected) > 1 else ""
            raise WeightsImportError(
                f"{self.name}: unexpected key {unexpected[0]!r}{more} (not part of the model its config describes)"
            )
        for key, tensor in self.out.items():
            if key not in expected:
                raise WeightsImportError(
                    f"{self.name}: key {self.origin[key]!r} maps to {key!r}, which the model lacks"
                )
            if tuple(tensor.shape) != tuple(expected[key]):
                raise WeightsImportError(
                    f"{self.name}: key {self.origin[key]!r} has shape {tuple(tensor.shape)}, but the model its config "
                    f"describes needs {tuple(expected[key])} for {key!r}"
                )
        missing = sorted(set(expected) - set(self.out))
        if missing:
            raise WeightsImportError(f"{self.name}: no source key provides the model's {missing[0]!r}")
        return self.out


def require_file(folder: Path, name: str, what: str) -> Path:
    """`folder / name`, or a `WeightsImportError` saying the folder is not (a complete) `what` folder."""
    folder = Path(folder)
    if not folder.is_dir():
        raise WeightsImportError(f"{folder}: not a folder (pass the released {what} model folder)")
    path = folder / name
    if not path.is_file():
        present = ", ".join(sorted(p.name for p in folder.iterdir())[:8]) or "nothing"
        raise WeightsImportError(f"{path}: missing; a released {what} folder holds it (this folder has: {present})")
    return path


def need(config: dict[str, Any], key: str, name: str, kind: type | tuple[type, ...] = (int, float, str)) -> Any:
    """`config[key]` (dotted for nested), or a `WeightsImportError` naming the config file and key."""
    value: Any = config
    for part in key.split("."):
        if not isinstance(value, dict) or part not in value:
            raise WeightsImportError(f"{name}: missing config key {key!r}")
        value = value[part]
    if not isinstance(value, kind) or isinstance(value, bool) and kind is int:
        raise WeightsImportError(f"{name}: config key {key!r} has the wrong type ({type(value).__name__})")
    return value


def meta_state(shapes: dict[str, list[int]]) -> dict[str, Tensor]:
    """Tensors of the given shapes on the meta device (to check key mappings without any weights)."""
    return {key: torch.empty(shape, device="meta") for key, shape in shapes.items()}


def model_shapes(model_config: Any) -> dict[str, tuple[int, ...]]:
    """Keys (the stable names of weights files, io/state_keys.py) and shapes of the state dict of the LRMModel that
    `model_config` builds, built on the meta device."""
    with torch.device("meta"):
        model = new_model(inference_config(model_config), "meta")
    return {to_stable(key): tuple(t.shape) for key, t in model.state_dict().items()}
