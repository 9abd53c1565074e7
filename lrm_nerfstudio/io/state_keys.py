"""The state-dict key names of weights files: the project's own, whatever transformers calls its modules.

The image encoder is a transformers ViT / DINOv2, whose submodule names are transformers' internals: they changed
between transformers 4 and 5 (`encoder.layer.N.attention.attention.query` became `layers.N.attention.q_proj` for
ViT) and may change again. A file written with those names would fit one transformers release only. So files hold
stable names (`encoder.vit.blocks.N.attn.q.weight`), and this module is the one place that translates them, in
the spirit of transformers' own conversion mapping. Keys outside the encoder's backbone name the project's own
modules and are written unchanged.
"""

from __future__ import annotations

import re

from torch import Tensor, nn

BACKBONE = "encoder.backbone."
"""Prefix of the transformers model inside the project's image encoder."""
STABLE = "encoder.vit."
"""Prefix of its keys in a weights file."""

_BLOCK = re.compile(r"^(?:layers|encoder\.layer)\.(\d+)\.(.+)$")
"""A transformer block: `layers.N.` (ViT in transformers 5) or `encoder.layer.N.` (ViT in 4, DINOv2)."""
_BLOCK_PARTS = {
    # transformers 5 (ViT and DINOv2)
    "attention.q_proj": "attn.q",
    "attention.k_proj": "attn.k",
    "attention.v_proj": "attn.v",
    "attention.o_proj": "attn.out",
    # transformers 4
    "attention.attention.query": "attn.q",
    "attention.attention.key": "attn.k",
    "attention.attention.value": "attn.v",
    "attention.output.dense": "attn.out",
    "intermediate.dense": "mlp.fc1",
    "output.dense": "mlp.fc2",
    # both
    "layernorm_before": "norm1",
    "layernorm_after": "norm2",
    "norm1": "norm1",
    "norm2": "norm2",
    "mlp.fc1": "mlp.fc1",
    "mlp.fc2": "mlp.fc2",
    "layer_scale1.lambda1": "ls1",
    "layer_scale2.lambda1": "ls2",
}
"""Block submodule (or parameter) -> stable name; the parameter's last part (weight, bias) is kept."""
_TOP_PARTS = {
    "embeddings.cls_token": "cls_token",
    "embeddings.mask_token": "mask_token",
    "embeddings.register_tokens": "register_tokens",
    "embeddings.position_embeddings": "pos_embed",
    "embeddings.patch_embeddings.projection.weight": "patch_embed.weight",
    "embeddings.patch_embeddings.projection.bias": "patch_embed.bias",
    "layernorm.weight": "norm.weight",
    "layernorm.bias": "norm.bias",
}


class StateKeyError(KeyError):
    """A model key this mapping does not know (a transformers release whose names are not mapped yet)."""


def to_stable(key: str) -> str:
    """The file name of model state-dict key `key`.

    Raises:
        StateKeyError: an encoder backbone key no rule maps.
    """
    if not key.startswith(BACKBONE):
        return key
    rest = key[len(BACKBONE) :]
    if rest in _TOP_PARTS:
        return STABLE + _TOP_PARTS[rest]
    block = _BLOCK.match(rest)
    if block is not None:
        index, inner = block.groups()
        module, _, param = inner.rpartition(".")
        for name in (inner, module):  # a parameter of its own (layer scale) or a module's weight / bias
            if name in _BLOCK_PARTS:
                tail = "" if name == inner else "." + param
                return f"{STABLE}blocks.{index}.{_BLOCK_PARTS[name]}{tail}"
    raise StateKeyError(f"no stable name for the encoder key {key!r} (a transformers release not mapped yet)")


def stable_state(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """`state` with file key names (see `to_stable`)."""
    out = {to_stable(key): value for key, value in state.items()}
    if len(out) != len(state):
        raise StateKeyError("two model keys map to one stable name")
    return out


def model_state(stable: dict[str, Tensor], model_keys: list[str]) -> dict[str, Tensor]:
    """File-named `stable` renamed to the keys of the model whose state-dict keys are `model_keys`.

    Keys of neither side stay as they are, so that `load_state_dict(strict=True)` names them.
    """
    to_model = {to_stable(key): key for key in model_keys}
    return {to_model.get(key, key): value for key, value in stable.items()}


def load_stable_state(model: nn.Module, stable: dict[str, Tensor]) -> None:
    """`model.load_state_dict` (strict) of a file-named state dict.

    Raises:
        RuntimeError: missing or unexpected keys, or wrong shapes (torch's message).
    """
    model.load_state_dict(model_state(stable, list(model.state_dict())), strict=True)
