"""OpenLRM v1.1 (zxhezexin/openlrm-{obj,mix}-{small,base,large}-1.1): `config.json` + `model.safetensors` -> LRMModel.

OpenLRM's modules map onto the project's parts as configuration (lrm_nerfstudio/model):
- `encoder.model` (its vendored DINOv2 with 4 registers and LayerScale) -> `encoder` with
  `architecture="dinov2_registers"` (transformers' Dinov2WithRegistersModel: the same antialiased bicubic
  position interpolation, offset 0; registers dropped from the output) and no pixel normalisation.
- `camera_embedder` -> `camera_embedder`; `pos_embed` [1, 3 n^2, D] -> `transformer.pos_embed` [3, n, n, D];
  `transformer` (ConditionModulationBlock) -> `transformer` with `block_style="lrm"`, no attention biases and
  affine LayerNorms inside the modulated norms. Its cross-attention weights come packed (`in_proj_weight`, when
  transformer_dim == encoder_feat_dim, as in base) or split (`q/k/v_proj_weight`, small and large).
- `upsampler` -> `upsampler`; `synthesizer.decoder` (OSGDecoder) -> `field.mlp` (ReLU, widened sigmoid, softplus,
  third plane (z, y)).
- The renderer is reimplemented from the math (OpenLRM's renderer files are under NVIDIA's non-commercial EG3D
  licence): stratified + importance samples, `rendering_samples_per_ray / 2` each, composited per interval
  (`compositing="interval"`: softplus of the mean raw density of its end points, their mean colour).
OpenLRM's canonical source camera is the project's (on -Y at distance 2, focal 0.75), so points map unchanged.
Licence: OpenLRM's released weights are CC BY-NC 4.0 (non-commercial).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from torch import Tensor

from lrm_nerfstudio.convert.common import StateMapper, WeightsImportError, need, require_file
from lrm_nerfstudio.model.camera_embedder import CameraEmbedderConfig
from lrm_nerfstudio.model.encoder import ImageEncoderConfig
from lrm_nerfstudio.model.lrm_model import LRMModelConfig
from lrm_nerfstudio.model.processor import ProcessorConfig
from lrm_nerfstudio.model.triplane_field import TriplaneFieldConfig
from lrm_nerfstudio.model.triplane_transformer import TriplaneTransformerConfig
from lrm_nerfstudio.model.upsampler import TriplaneUpsamplerConfig

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
ENCODER_FILE = "encoder.json"
"""Optional: the DINOv2 hyper-parameters, for encoders that `encoder_model_name` does not name (test stand-ins)."""

ENCODERS: dict[str, dict[str, Any]] = {
    "dinov2_vits14_reg": {"embed_dim": 384, "depth": 12, "num_heads": 6},
    "dinov2_vitb14_reg": {"embed_dim": 768, "depth": 12, "num_heads": 12},
}
"""DINOv2-with-registers encoders of the released models (patch 14, 4 registers, 518 px position grid)."""
ENCODER_DEFAULTS: dict[str, Any] = {"patch_size": 14, "num_register_tokens": 4, "img_size": 518, "layer_norm_eps": 1e-6}

RELEASED_CONFIGS: dict[str, dict[str, Any]] = {
    "small": {"camera_embed_dim": 1024, "rendering_samples_per_ray": 96, "transformer_dim": 512,
              "transformer_layers": 12, "transformer_heads": 8, "triplane_low_res": 32, "triplane_high_res": 64,
              "triplane_dim": 32, "encoder_freeze": False, "encoder_type": "dinov2",
              "encoder_model_name": "dinov2_vits14_reg", "encoder_feat_dim": 384},
    "base": {"camera_embed_dim": 1024, "rendering_samples_per_ray": 96, "transformer_dim": 768,
             "transformer_layers": 12, "transformer_heads": 12, "triplane_low_res": 32, "triplane_high_res": 64,
             "triplane_dim": 48, "encoder_freeze": False, "encoder_type": "dinov2",
             "encoder_model_name": "dinov2_vitb14_reg", "encoder_feat_dim": 768},
    "large": {"camera_embed_dim": 1024, "rendering_samples_per_ray": 128, "transformer_dim": 1024,
              "transformer_layers": 16, "transformer_heads": 16, "triplane_low_res": 32, "triplane_high_res": 64,
              "triplane_dim": 80, "encoder_freeze": False, "encoder_type": "dinov2",
              "encoder_model_name": "dinov2_vitb14_reg", "encoder_feat_dim": 768},
}  # fmt: skip
"""ModelLRM keyword arguments of the released v1.1 models (model card)."""
SOURCE_SIZES = {"small": 224, "base": 336, "large": 448}
"""`source_size` of OpenLRM's infer-{s,b,l}.yaml."""
PLANE_AXES_OPENLRM = ((0, 1), (0, 2), (2, 1))
"""OpenLRM's planes: XY, XZ, and ZY (z along the width; TripoSR's and the project's third plane is YZ)."""


# ----------------------------------------------------------------------------------------------------- config
def _read_json(path: Path) -> dict[str, Any]:
    try:
        value = json.loads(path.read_text(encoding="utf8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise WeightsImportError(f"{path}: not readable JSON ({type(err).__name__}: {err})") from err
    if not isinstance(value, dict):
        raise WeightsImportError(f"{path}: expected a JSON object, got {type(value).__name__}")
    return value


def read_config(folder: Path) -> dict[str, Any]:
    """config.json (ModelLRM keyword arguments) with the encoder's hyper-parameters under key "encoder".

    Raises:
        WeightsImportError: missing or unreadable file, an OpenLRM v1.0 (DINO) config, unknown encoder.
    """
    path = require_file(folder, CONFIG_FILE, "OpenLRM")
    config = _read_json(path)
    if need(config, "encoder_type", str(path), str) != "dinov2":
        raise WeightsImportError(f"{path}: encoder_type {config['encoder_type']!r}: only OpenLRM v1.1 (dinov2)")
    enc_file = Path(folder) / ENCODER_FILE
    if enc_file.is_file():
        config["encoder"] = {**ENCODER_DEFAULTS, **_read_json(enc_file)}
    else:
        enc_name = need(config, "encoder_model_name", str(path), str)
        if enc_name not in ENCODERS:
            raise WeightsImportError(f"{path}: encoder_model_name {enc_name!r} unknown (one of {sorted(ENCODERS)})")
        config["encoder"] = {**ENCODER_DEFAULTS, **ENCODERS[enc_name]}
    return config


def model_config(config: dict[str, Any], name: str = CONFIG_FILE) -> LRMModelConfig:
    """The project's LRMModelConfig reproducing an OpenLRM v1.1 config (from `read_config`)."""
    enc = config.get("encoder") or {**ENCODER_DEFAULTS, **ENCODERS[need(config, "encoder_model_name", name, str)]}
    width = need(enc, "embed_dim", name, int)
    if need(config, "encoder_feat_dim", name, int) != width:
        raise WeightsImportError(f"{name}: encoder_feat_dim {config['encoder_feat_dim']} != encoder width {width}")
    samples = need(config, "rendering_samples_per_ray", name, int)
    return LRMModelConfig(
        processor=processor(config),
        encoder=ImageEncoderConfig(
            pretrained=None,
            architecture="dinov2_registers",
            image_size=need(enc, "img_size", name, int),
            patch_size=need(enc, "patch_size", name, int),
            hidden_size=width,
            num_layers=need(enc, "depth", name, int),
            num_heads=need(enc, "num_heads", name, int),
            mlp_ratio=4,
            num_register_tokens=need(enc, "num_register_tokens", name, int),
            layer_norm_eps=float(enc.get("layer_norm_eps", 1e-6)),
            normalize=False,
        ),
        camera_embedder=CameraEmbedderConfig(embed_dim=need(config, "camera_embed_dim", name, int)),
        transformer=TriplaneTransformerConfig(
            block_style="lrm",
            triplane_low_res=need(config, "triplane_low_res", name, int),
            inner_dim=need(config, "transformer_dim", name, int),
            num_layers=need(config, "transformer_layers", name, int),
            num_heads=need(config, "transformer_heads", name, int),
            mlp_ratio=4.0,
            eps=1e-6,
            qkv_bias=False,
            out_bias=False,
            modln_affine=True,
        ),
        upsampler=TriplaneUpsamplerConfig(out_dim=need(config, "triplane_dim", name, int)),
        field=TriplaneFieldConfig(
            hidden_dim=64,
            num_hidden_layers=3,
            activation="relu",
            density_activation="softplus",
            density_bias=-1.0,
            color_activation="widened_sigmoid",
            plane_axes=PLANE_AXES_OPENLRM,
            box_radius=1.0,
        ),
        sampler="pdf",
        compositing="interval",
        num_coarse_samples=samples // 2,
        # nerfstudio's PDF sampler keeps the coarse bins' edges and adds num_importance + 1 new ones: S_c + S_i + 1
        # samples in all, so this gives OpenLRM's rendering_samples_per_ray
        num_importance_samples=samples - samples // 2 - 1,
    )


def model_size(config: dict[str, Any]) -> str | None:
    """small / base / large when the config is one of the released ones' architectures, else None."""
    keys = ("transformer_dim", "transformer_layers", "triplane_dim", "encoder_model_name")
    for size, released in RELEASED_CONFIGS.items():
        if all(config.get(k) == released[k] for k in keys):
            return size
    return None


def source_resolution(config: dict[str, Any]) -> int:
    """OpenLRM's inference source size for this model (224 / 336 / 448 by size; else the encoder's grid)."""
    size = model_size(config)
    if size is not None:
        return SOURCE_SIZES[size]
    return int(config.get("encoder", {}).get("img_size", 224))


def processor(config: dict[str, Any]) -> ProcessorConfig:
    """OpenLRM's source images: white background, bicubic resize with align_corners; its app recentres photos
    with a 0.2 border."""
    return ProcessorConfig(
        resolution=source_resolution(config),
        background=(1.0, 1.0, 1.0),
        resize="bicubic_align_corners",
        foreground_ratio=0.8,
    )


# ----------------------------------------------------------------------------------------------------- weights
def read_state(folder: Path) -> dict[str, Tensor]:
    """model.safetensors as a state dict."""
    path = require_file(folder, WEIGHTS_FILE, "OpenLRM")
    try:
        with safe_open(str(path), framework="pt", device="cpu") as fh:
            return {key: fh.get_tensor(key) for key in fh.keys()}  # noqa: SIM118 (safe_open is not iterable)
    except Exception as err:  # safetensors raises its own error types for bad headers
        raise WeightsImportError(f"{path}: not a readable safetensors file ({type(err).__name__}: {err})") from err


def convert_state(state: dict[str, Tensor], config: dict[str, Any], name: str) -> StateMapper:
    """Map OpenLRM's state dict onto the project's key names (call `.finish(expected)` to check it)."""
    m = StateMapper(state, name)
    enc = config["encoder"]
    src, dst = "encoder.model.", "encoder.vit."  # stable names: independent of transformers' internals
    for old, new in (
        ("cls_token", "cls_token"),
        ("pos_embed", "pos_embed"),
        ("register_tokens", "register_tokens"),
        ("patch_embed.proj.weight", "patch_embed.weight"),
        ("patch_embed.proj.bias", "patch_embed.bias"),
        ("norm.weight", "norm.weight"),
        ("norm.bias", "norm.bias"),
    ):
        m.copy(src + old, dst + new)
    for i in range(int(enc["depth"])):
        s, t = f"{src}blocks.{i}.", f"{dst}blocks.{i}."
        for p in ("weight", "bias"):
            qkv = m.take(f"{s}attn.qkv.{p}")
            if qkv.shape[0] % 3:
                raise WeightsImportError(f"{name}: key {s}attn.qkv.{p!r} has shape {tuple(qkv.shape)}, not 3 x width")
            for x, part in zip("qkv", qkv.chunk(3, dim=0)):
                m.put(f"{t}attn.{x}.{p}", part, f"{s}attn.qkv.{p}")
        for old, new in (
            ("norm1.weight", "norm1.weight"),
            ("norm1.bias", "norm1.bias"),
            ("attn.proj.weight", "attn.out.weight"),
            ("attn.proj.bias", "attn.out.bias"),
            ("ls1.gamma", "ls1"),
            ("norm2.weight", "norm2.weight"),
            ("norm2.bias", "norm2.bias"),
            ("mlp.fc1.weight", "mlp.fc1.weight"),
            ("mlp.fc1.bias", "mlp.fc1.bias"),
            ("mlp.fc2.weight", "mlp.fc2.weight"),
            ("mlp.fc2.bias", "mlp.fc2.bias"),
            ("ls2.gamma", "ls2"),
        ):
            m.copy(s + old, t + new)

    m.copy_prefix("camera_embedder.mlp.", "camera_embedder.mlp.", ("0.weight", "0.bias", "2.weight", "2.bias"))
    n = int(config["triplane_low_res"])
    m.copy("pos_embed", "transformer.pos_embed", lambda t: t.reshape(3, n, n, t.shape[-1]))
    dim = int(config["transformer_dim"])
    for i in range(int(config["transformer_layers"])):
        s, t = f"transformer.layers.{i}.", f"transformer.layers.{i}."
        for old, new in (("norm1.", "norm_cross."), ("norm2.", "norm_self."), ("norm3.", "norm_mlp.")):
            m.copy_prefix(s + old + "norm.", t + new + "norm.", ("weight", "bias"))
            m.copy_prefix(s + old + "mlp.1.", t + new + "mod.1.", ("weight", "bias"))
        if m.has(s + "cross_attn.in_proj_weight"):  # transformer_dim == encoder_feat_dim: packed
            packed = m.take(s + "cross_attn.in_proj_weight")
            key = s + "cross_attn.in_proj_weight"
            m.put(t + "cross_q.weight", packed[:dim], key)
            m.put(t + "cross_kv.weight", packed[dim:], key)
        else:  # split q/k/v projections
            m.copy(s + "cross_attn.q_proj_weight", t + "cross_q.weight")
            k, v = m.take(s + "cross_attn.k_proj_weight"), m.take(s + "cross_attn.v_proj_weight")
            if k.shape != v.shape:
                raise WeightsImportError(f"{name}: keys {s}cross_attn.k/v_proj_weight differ in shape")
            m.put(t + "cross_kv.weight", torch.cat([k, v], dim=0), s + "cross_attn.k/v_proj_weight")
        m.copy(s + "cross_attn.out_proj.weight", t + "cross_out.weight")
        m.copy(s + "self_attn.in_proj_weight", t + "self_qkv.weight")
        m.copy(s + "self_attn.out_proj.weight", t + "self_out.weight")
        m.copy_prefix(s + "mlp.0.", t + "mlp.0.", ("weight", "bias"))
        m.copy_prefix(s + "mlp.3.", t + "mlp.2.", ("weight", "bias"))
    m.copy_prefix("transformer.norm.", "transformer.norm.", ("weight", "bias"))
    m.copy_prefix("upsampler.", "upsampler.deconv.", ("weight", "bias"))
    for j in (0, 2, 4, 6):
        m.copy_prefix(f"synthesizer.decoder.net.{j}.", f"field.mlp.{j}.", ("weight", "bias"))
    return m
