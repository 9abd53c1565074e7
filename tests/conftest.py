"""Shared fixtures: small procedural datasets made by the project's own generator."""

from __future__ import annotations

from copy import deepcopy
from pathlib import Path

import pytest
import torch

from lrm_nerfstudio.generate.generate import GenerateConfig
from lrm_nerfstudio.generate.generate import main as generate

torch.set_num_threads(2)


@pytest.fixture(scope="session")
def procedural_dataset(tmp_path_factory) -> Path:
    """8 objects (6 train, 1 val, 1 test) x 8 views at 64 px."""
    root = tmp_path_factory.mktemp("procedural") / "ds"
    generate(GenerateConfig(output=root, num_objects=8, num_views=8, resolution=64, seed=0, workers=1))
    return root


def tiny_trainer_config(data: Path, **overrides):
    """The `lrm-tiny` method shrunk further so that a step takes well under a second, loading in-process."""
    from lrm_nerfstudio.lrm_config import lrm_tiny_method

    config = deepcopy(lrm_tiny_method.config)
    dm = config.pipeline.datamanager
    dm.data = data
    dm.num_workers = 0
    dm.objects_per_batch = 2
    dm.target_views_per_object = 2
    dm.patch_size = 16
    dm.render_resolution_range = (32, 64)
    dm.eval_resolution = 32
    model = config.pipeline.model
    model.encoder.hidden_size = 64
    model.encoder.num_layers = 2
    model.encoder.num_heads = 2
    model.transformer.triplane_low_res = 8
    model.transformer.inner_dim = 64
    model.transformer.num_layers = 2
    model.transformer.num_heads = 2
    model.camera_embedder.embed_dim = 64
    model.upsampler.out_dim = 8
    model.field.hidden_dim = 32
    model.num_coarse_samples = 12
    model.num_importance_samples = 12
    model.use_lpips = False
    for key, value in overrides.items():
        setattr(config, key, value)
    return config


def assert_same_grads(got: dict, want: dict) -> None:
    """Same parameters with gradients, each equal relative to its own scale.

    Attention key biases get an exactly-zero gradient in theory (softmax ignores a per-query constant), i.e. pure
    rounding noise: every gradient is measured against at least 1e-4 of the largest one.
    """
    import torch

    assert set(got) == set(want)
    floor = 1e-4 * max(float(g.abs().max()) for g in want.values())
    for name, g in want.items():
        scale = max(float(g.abs().max()), floor)
        torch.testing.assert_close(got[name] / scale, g / scale, rtol=1e-4, atol=1e-5, msg=name)
