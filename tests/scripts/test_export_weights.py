"""`lrm-export-weights`: one safetensors file that rebuilds the checkpoint's model exactly."""

from __future__ import annotations

import torch
from lrm_run_helpers import save_tiny_run
from safetensors import safe_open

from lrm_nerfstudio.cameras import canonical_source_camera
from lrm_nerfstudio.pretrained import load_pretrained
from lrm_nerfstudio.scripts.export_weights import ExportWeightsConfig, main
from lrm_nerfstudio.scripts.reconstruct import load_model


def test_exported_weights_give_identical_triplanes(procedural_dataset, tmp_path):
    config_path = save_tiny_run(procedural_dataset, tmp_path / "run", step=7, seed=3)
    weights = tmp_path / "model.safetensors"
    assert main(ExportWeightsConfig(load_config=config_path, output=weights)) == 0

    with safe_open(str(weights), framework="pt") as fh:
        metadata = fh.metadata()
    assert metadata["format"] == "lrm-nerfstudio-weights" and metadata["version"] == "2"
    assert metadata["method"] == "lrm-tiny" and '"step": 7' in metadata["source"]
    assert "!!" not in str(metadata) and "lrm_nerfstudio." not in str(metadata)  # no YAML tags, no class paths
    loaded = load_pretrained(weights)
    assert loaded.step == 7 and loaded.method == "lrm-tiny" and loaded.source.family == "trained"

    from_ckpt = load_model(load_config=config_path, device="cpu")
    from_file = load_model(weights=weights, device="cpu")  # a fresh model built from the embedded config
    ckpt_state, file_state = from_ckpt.model.state_dict(), from_file.model.state_dict()
    assert set(file_state) == set(ckpt_state) and len(loaded.state) == len(ckpt_state)
    for key, value in file_state.items():
        assert torch.equal(value, ckpt_state[key]), key

    torch.manual_seed(0)
    images = torch.rand(2, 3, 64, 64)
    cameras = canonical_source_camera().expand(2, 16)
    with torch.no_grad():
        expected = from_ckpt.model.predict_triplanes(images, cameras)
        got = from_file.model.predict_triplanes(images, cameras)
    assert torch.equal(expected, got)


def test_export_weights_bad_config_exits_2(tmp_path, capsys):
    missing = tmp_path / "missing.yml"
    assert main(ExportWeightsConfig(load_config=missing, output=tmp_path / "x.safetensors")) == 2
    assert str(missing) in capsys.readouterr().out.replace("\n", "")
    assert not (tmp_path / "x.safetensors").exists()
