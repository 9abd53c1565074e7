"""The one place an LRMModel is built for inference: from its config and a state dict."""

from __future__ import annotations

from dataclasses import replace

import torch
from torch import Tensor

from lrm_nerfstudio.cameras import unit_scene_box
from lrm_nerfstudio.io.checkpoints import ModelLoadError
from lrm_nerfstudio.io.state_keys import load_stable_state
from lrm_nerfstudio.model.lrm_model import LRMModel, LRMModelConfig


def inference_config(model_config: LRMModelConfig) -> LRMModelConfig:
    """`model_config` for a model whose weights all come from a state dict: no perceptual loss, no pretrained
    encoder to look up, nothing to initialise from."""
    encoder = replace(model_config.encoder, pretrained=None, allow_download=False)
    return replace(model_config, use_lpips=False, encoder=encoder, init_from=None)


def new_model(model_config: LRMModelConfig, device: str | torch.device = "cpu") -> LRMModel:
    """A freshly initialised LRM model of `model_config` (the config's own encoder and loss settings), in eval
    mode on `device`."""
    return (
        model_config.setup(scene_box=unit_scene_box(), num_train_data=1, metadata={}, device=device).to(device).eval()
    )


def build_model(
    model_config: LRMModelConfig, state: dict[str, Tensor], device: str | torch.device, name: str
) -> LRMModel:
    """The LRM model of `model_config` with `state` loaded (strict; model keys or a weights file's stable keys),
    in eval mode.

    Raises:
        ModelLoadError: the weights do not fit the config.
    """
    model = new_model(inference_config(model_config), device)
    try:
        load_stable_state(model, state)
    except RuntimeError as err:
        raise ModelLoadError(f"{name}: the weights do not fit the model its config describes ({err})") from err
    return model
