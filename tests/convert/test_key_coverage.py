"""Every key and shape of the released checkpoints maps onto the project's model at full size (meta device)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lrm_nerfstudio.convert import openlrm, triposr
from lrm_nerfstudio.convert.common import meta_state, model_shapes
from lrm_nerfstudio.convert.load import imported_config

FIXTURES = Path(__file__).parents[1] / "fixtures" / "reference"


def _check(family, source_config, shapes):
    config = imported_config(family, source_config, "released config", FIXTURES)
    module = triposr if family == "triposr" else openlrm
    mapper = module.convert_state(meta_state(shapes), source_config, "released checkpoint")
    expected = model_shapes(config.model)
    expected.pop("device_indicator_param")
    state = mapper.finish(expected)  # raises on any unmapped, unexpected or mis-shaped key
    return config, state


def test_triposr_released_keys_all_map():
    shapes = json.loads((FIXTURES / "triposr_released_keys.json").read_text())
    assert len(shapes) == 549
    config, state = _check("triposr", {**triposr.RELEASED_CONFIG, "dino": triposr.DINO_VITB16}, shapes)
    dropped = sum(n for k, s in shapes.items() if "pooler" in k for n in [_numel(s)])
    assert sum(t.numel() for t in state.values()) == 419_275_628 - dropped
    assert config.processor.resolution == 512
    assert config.model.num_coarse_samples == 128


@pytest.mark.parametrize("size", ["small", "base", "large"])
def test_openlrm_released_keys_all_map(size):
    shapes = json.loads((FIXTURES / "openlrm_released_keys.json").read_text())[size]
    source = dict(openlrm.RELEASED_CONFIGS[size])
    source["encoder"] = {**openlrm.ENCODER_DEFAULTS, **openlrm.ENCODERS[source["encoder_model_name"]]}
    config, state = _check("openlrm", source, shapes)
    params = {"small": 111_390_948, "base": 260_201_972, "large": 452_138_004}[size]
    assert sum(t.numel() for t in state.values()) == params  # nothing dropped, nothing invented
    assert config.processor.resolution == openlrm.SOURCE_SIZES[size]
    model = config.model
    # nerfstudio's PDF sampler with the coarse samples included gives coarse + importance + 1 samples
    assert model.num_coarse_samples + model.num_importance_samples + 1 == source["rendering_samples_per_ray"]
    packed = any(k.endswith("cross_attn.in_proj_weight") for k in shapes)
    assert packed == (size == "base")  # both cross-attention layouts are covered


def _numel(shape):
    n = 1
    for s in shape:
        n *= s
    return n
