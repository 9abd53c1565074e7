"""TripoSR (stabilityai/TripoSR, MIT): `config.yaml` + `model.ckpt` -> the project's LRMModel.

TripoSR's modules map onto the project's parts as configuration (lrm_nerfstudio/model):
- `image_tokenizer` (transformers ViTModel, DINO ViT-B/16) -> `encoder`: ImageNet normalisation, and position
  embeddings resized as transformers 4.35 did (`pos_interpolation="triposr"`); the unused pooler is dropped.
- `tokenizer.embeddings` [3, C, n, n] -> `transformer.pos_embed` [3, n, n, C]; `backbone` (Transformer1D) ->
  `transformer` with `block_style="triposr"` (GroupNorm + proj_in, self -> cross -> GEGLU, proj_out + residual).
- `post_processor` -> `upsampler`; `decoder` (NeRFMLP) -> `field.mlp`.
- `renderer` -> `sampler="midpoint"`; its radius-0.87 box and TripoSR's frame -> `field.box_radius`,
  `field.frame_axes` / `frame_signs`: TripoSR's point (x, y, z) is the project's (y, -x, z), so TripoSR's +X camera
  (its renders start there, +Z up, image right = +Y) is the project's canonical camera on -Y.

Key names are those of transformers 4.35 (what TripoSR pins) on the source side and the project's stable weights-file
names (io/state_keys.py) on the other, so an import does not depend on the installed transformers' module names.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import torch
import yaml
from torch import Tensor

from lrm_nerfstudio.convert.common import StateMapper, WeightsImportError, need, require_file
from lrm_nerfstudio.io.checkpoint_files import load_failure
from lrm_nerfstudio.model.encoder import ImageEncoderConfig
from lrm_nerfstudio.model.lrm_model import LRMModelConfig
from lrm_nerfstudio.model.processor import ProcessorConfig
from lrm_nerfstudio.model.triplane_field import PLANE_AXES, TriplaneFieldConfig
from lrm_nerfstudio.model.triplane_transformer import TriplaneTransformerConfig
from lrm_nerfstudio.model.upsampler import TriplaneUpsamplerConfig

CONFIG_FILE = "config.yaml"
WEIGHTS_FILE = "model.ckpt"

DINO_VITB16: dict[str, Any] = {
    "hidden_size": 768,
    "num_hidden_layers": 12,
    "num_attention_heads": 12,
    "intermediate_size": 3072,
    "image_size": 224,
    "patch_size": 16,
    "layer_norm_eps": 1e-12,
    "hidden_act": "gelu",
    "qkv_bias": True,
}
"""`facebook/dino-vitb16`'s ViT config (what the released config names; transformers' ViTConfig defaults)."""

RELEASED_CONFIG: dict[str, Any] = {
    "cond_image_size": 512,
    "image_tokenizer": {"pretrained_model_name_or_path": "facebook/dino-vitb16"},
    "tokenizer": {"plane_size": 32, "num_channels": 1024},
    "backbone": {
        "in_channels": 1024,
        "num_attention_heads": 16,
        "attention_head_dim": 64,
        "num_layers": 16,
        "cross_attention_dim": 768,
    },
    "post_processor": {"in_channels": 1024, "out_channels": 40},
    "decoder": {"in_channels": 120, "n_neurons": 64, "n_hidden_layers": 9, "activation": "silu"},
    "renderer": {
        "radius": 0.87,
        "feature_reduction": "concat",
        "density_activation": "exp",
        "density_bias": -1.0,
        "num_samples_per_ray": 128,
    },
}
"""stabilityai/TripoSR's config.yaml (interpolations resolved)."""

FRAME_AXES = (1, 0, 2)
FRAME_SIGNS = (-1.0, 1.0, 1.0)
"""TripoSR's point (x, y, z) is the project's (y, -x, z): TripoSR x = -project y, y = project x, z = z."""

_VIT_RENAMES = (
    ("attention.attention.query.", "attn.q."),
    ("attention.attention.key.", "attn.k."),
    ("attention.attention.value.", "attn.v."),
    ("attention.output.dense.", "attn.out."),
    ("intermediate.dense.", "mlp.fc1."),
    ("output.dense.", "mlp.fc2."),
    ("layernorm_before.", "norm1."),
    ("layernorm_after.", "norm2."),
)
"""TripoSR's ViT block keys (transformers 4 names) -> the project's stable names (io/state_keys.py)."""


# ----------------------------------------------------------------------------------------------------- config
def _resolve(value: Any, root: dict[str, Any], name: str) -> Any:
    """Resolve OmegaConf-style `${a.b}` interpolations (TripoSR's config uses `${tokenizer.num_channels}`)."""
    if isinstance(value, dict):
        return {k: _resolve(v, root, name) for k, v in value.items()}
    if isinstance(value, str):
        match = re.fullmatch(r"\$\{([\w.]+)\}", value.strip())
        if match:
            return _resolve(need(root, match.group(1), name, object), root, name)
    return value


def read_config(folder: Path) -> dict[str, Any]:
    """TripoSR's config.yaml with interpolations resolved, and its ViT config under key "dino".

    The ViT config is the JSON file the config names when it lies in the folder, else ViT-B/16 for
    `facebook/dino-vitb16` (the released name).

    Raises:
        WeightsImportError: missing or unreadable file, unknown ViT name.
    """
    path = require_file(folder, CONFIG_FILE, "TripoSR")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf8"))
    except (yaml.YAMLError, UnicodeDecodeError) as err:
        raise WeightsImportError(f"{path}: not readable YAML ({type(err).__name__}: {err})") from err
    if not isinstance(raw, dict):
        raise WeightsImportError(f"{path}: not a TripoSR config (expected a mapping, got {type(raw).__name__})")
    config = _resolve(raw, raw, str(path))
    vit_name = need(config, "image_tokenizer.pretrained_model_name_or_path", str(path), str)
    vit_file = Path(folder) / vit_name
    if vit_file.is_file():
        try:
            config["dino"] = {**DINO_VITB16, **json.loads(vit_file.read_text(encoding="utf8"))}
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise WeightsImportError(f"{vit_file}: not readable JSON ({type(err).__name__}: {err})") from err
    elif vit_name.rstrip("/").endswith("dino-vitb16"):
        config["dino"] = dict(DINO_VITB16)
    else:
        raise WeightsImportError(
            f"{path}: image tokenizer {vit_name!r} is neither a file in the folder nor facebook/dino-vitb16"
        )
    return config


def model_config(config: dict[str, Any], name: str = CONFIG_FILE) -> LRMModelConfig:
    """The project's LRMModelConfig reproducing a TripoSR config (from `read_config`).

    Raises:
        WeightsImportError: a config this reimplementation does not cover (the message names the key).
    """
    vit = config.get("dino", DINO_VITB16)
    hidden, heads = need(vit, "hidden_size", name, int), need(vit, "num_attention_heads", name, int)
    if vit.get("hidden_act", "gelu") != "gelu" or not vit.get("qkv_bias", True):
        raise WeightsImportError(f"{name}: only a GELU ViT with qkv biases is supported (DINO ViT-B/16)")
    channels = need(config, "tokenizer.num_channels", name, int)
    bb_heads = need(config, "backbone.num_attention_heads", name, int)
    inner = bb_heads * need(config, "backbone.attention_head_dim", name, int)
    if inner != channels or need(config, "backbone.in_channels", name, int) != channels:
        raise WeightsImportError(
            f"{name}: backbone width {inner} (heads x head dim) must equal tokenizer.num_channels {channels}"
        )
    if need(config, "backbone.cross_attention_dim", name, int) != hidden:
        raise WeightsImportError(f"{name}: backbone.cross_attention_dim must equal the ViT hidden size {hidden}")
    renderer = config.get("renderer", {})
    if renderer.get("feature_reduction", "concat") != "concat":
        raise WeightsImportError(f"{name}: renderer.feature_reduction {renderer['feature_reduction']!r} unsupported")
    if renderer.get("density_activation") not in ("exp", "trunc_exp"):
        raise WeightsImportError(f"{name}: renderer.density_activation must be exp")
    activation = config.get("decoder", {}).get("activation", "relu")
    if activation not in ("silu", "relu"):
        raise WeightsImportError(f"{name}: decoder.activation {activation!r} unsupported (silu or relu)")
    backbone = config["backbone"]
    if backbone.get("attention_bias", False) or backbone.get("activation_fn", "geglu") != "geglu":
        raise WeightsImportError(f"{name}: only the released backbone (no attention bias, GEGLU) is supported")
    return LRMModelConfig(
        processor=processor(config),
        encoder=ImageEncoderConfig(
            pretrained=None,
            architecture="vit",
            image_size=need(vit, "image_size", name, int),
            patch_size=need(vit, "patch_size", name, int),
            hidden_size=hidden,
            num_layers=need(vit, "num_hidden_layers", name, int),
            num_heads=heads,
            mlp_ratio=need(vit, "intermediate_size", name, int) // hidden,
            layer_norm_eps=float(vit.get("layer_norm_eps", 1e-12)),
            normalize=True,
            pos_interpolation="triposr",
        ),
        transformer=TriplaneTransformerConfig(
            block_style="triposr",
            triplane_low_res=need(config, "tokenizer.plane_size", name, int),
            inner_dim=channels,
            num_layers=need(config, "backbone.num_layers", name, int),
            num_heads=bb_heads,
            mlp_ratio=4.0,
            eps=1e-5,
            qkv_bias=False,
            out_bias=True,
            group_norm_groups=int(backbone.get("norm_num_groups", 32)),
            group_norm_eps=1e-6,
        ),
        upsampler=TriplaneUpsamplerConfig(out_dim=need(config, "post_processor.out_channels", name, int)),
        field=TriplaneFieldConfig(
            hidden_dim=need(config, "decoder.n_neurons", name, int),
            num_hidden_layers=need(config, "decoder.n_hidden_layers", name, int),
            activation=activation,
            density_activation="trunc_exp",  # exp in the forward pass; its gradient is clamped for fine-tuning
            density_bias=float(renderer.get("density_bias", -1.0)),
            color_activation="sigmoid",
            plane_axes=PLANE_AXES,
            box_radius=float(need(config, "renderer.radius", name, (int, float))),
            frame_axes=FRAME_AXES,
            frame_signs=FRAME_SIGNS,
        ),
        sampler="midpoint",
        num_coarse_samples=need(config, "renderer.num_samples_per_ray", name, int),
        num_importance_samples=0,
    )


def source_resolution(config: dict[str, Any]) -> int:
    """The side TripoSR resizes its conditioning image to."""
    return int(config.get("cond_image_size", 512))


def processor(config: dict[str, Any]) -> ProcessorConfig:
    """TripoSR's source images: grey background, object at 0.85 of the side, bilinear antialiased resize."""
    return ProcessorConfig(
        resolution=source_resolution(config),
        background=(0.5, 0.5, 0.5),
        resize="bilinear_antialias",
        foreground_ratio=0.85,
    )


# ----------------------------------------------------------------------------------------------------- weights
def read_state(folder: Path) -> dict[str, Tensor]:
    """model.ckpt as a state dict, read with `torch.load(weights_only=True)`."""
    path = require_file(folder, WEIGHTS_FILE, "TripoSR")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises many types for a bad file (pickle, zip, runtime)
        raise WeightsImportError(f"{path}: unreadable checkpoint ({load_failure(path, err)})") from err
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, Tensor) for v in state.values()):
        raise WeightsImportError(f"{path}: not a state dict of tensors")
    return state


def convert_state(state: dict[str, Tensor], config: dict[str, Any], name: str) -> StateMapper:
    """Map TripoSR's state dict onto the project's key names (call `.finish(expected)` to check it)."""
    m = StateMapper(state, name)
    vit = config.get("dino", DINO_VITB16)
    src, dst = "image_tokenizer.model.", "encoder.vit."  # stable names: independent of transformers' internals
    for old, new in (
        ("cls_token", "cls_token"),
        ("position_embeddings", "pos_embed"),
        ("patch_embeddings.projection.weight", "patch_embed.weight"),
        ("patch_embeddings.projection.bias", "patch_embed.bias"),
    ):
        m.copy(f"{src}embeddings.{old}", dst + new)
    for i in range(int(vit["num_hidden_layers"])):
        for old, new in _VIT_RENAMES:
            for p in ("weight", "bias"):
                m.copy(f"{src}encoder.layer.{i}.{old}{p}", f"{dst}blocks.{i}.{new}{p}")
    m.copy_prefix(src + "layernorm.", dst + "norm.", ("weight", "bias"))
    for p in ("weight", "bias"):  # TripoSR builds the ViT with its pooler but never uses it
        if m.has(f"{src}pooler.dense.{p}"):
            m.drop(f"{src}pooler.dense.{p}")

    m.copy("tokenizer.embeddings", "transformer.pos_embed", lambda t: t.permute(0, 2, 3, 1).contiguous())
    m.copy_prefix("backbone.norm.", "transformer.in_norm.", ("weight", "bias"))
    m.copy_prefix("backbone.proj_in.", "transformer.proj_in.", ("weight", "bias"))
    m.copy_prefix("backbone.proj_out.", "transformer.proj_out.", ("weight", "bias"))
    for i in range(int(config["backbone"]["num_layers"])):
        s, t = f"backbone.transformer_blocks.{i}.", f"transformer.layers.{i}."
        for old, new in (("norm1.", "norm_self."), ("norm2.", "norm_cross."), ("norm3.", "norm_mlp.")):
            m.copy_prefix(s + old, t + new, ("weight", "bias"))
        qkv = [m.take(f"{s}attn1.to_{x}.weight") for x in "qkv"]
        m.put(t + "self_qkv.weight", _cat(qkv, name, f"{s}attn1.to_q/k/v.weight"), f"{s}attn1.to_q/k/v.weight")
        m.copy_prefix(s + "attn1.to_out.0.", t + "self_out.", ("weight", "bias"))
        m.copy(s + "attn2.to_q.weight", t + "cross_q.weight")
        kv = [m.take(f"{s}attn2.to_{x}.weight") for x in "kv"]
        m.put(t + "cross_kv.weight", _cat(kv, name, f"{s}attn2.to_k/v.weight"), f"{s}attn2.to_k/v.weight")
        m.copy_prefix(s + "attn2.to_out.0.", t + "cross_out.", ("weight", "bias"))
        m.copy_prefix(s + "ff.net.0.proj.", t + "mlp.proj.", ("weight", "bias"))
        m.copy_prefix(s + "ff.net.2.", t + "mlp.out.", ("weight", "bias"))
    m.copy_prefix("post_processor.upsample.", "upsampler.deconv.", ("weight", "bias"))
    n_linear = int(config["decoder"]["n_hidden_layers"]) + 1
    for j in range(n_linear):
        m.copy_prefix(f"decoder.layers.{2 * j}.", f"field.mlp.{2 * j}.", ("weight", "bias"))
    return m


def _cat(tensors: list[Tensor], name: str, key: str) -> Tensor:
    if len({t.shape[1:] for t in tensors}) != 1:
        shapes = ", ".join(str(tuple(t.shape)) for t in tensors)
        raise WeightsImportError(f"{name}: keys {key!r} have mismatched shapes ({shapes})")
    return torch.cat(tensors, dim=0)
