"""`lrm-import-weights` and `from_pretrained`: released folders in, the project's weights file out; every bad
folder, key, shape or file is one clear error naming the file and the key (exit 2), never a partial load."""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import pytest
import torch
from nerfstudio.utils.eval_utils import eval_setup
from safetensors.torch import load_file, save_file

from lrm_nerfstudio.cameras import canonical_source_camera
from lrm_nerfstudio.io.checkpoints import ModelLoadError
from lrm_nerfstudio.io.weights import sha256_of
from lrm_nerfstudio.pretrained import from_pretrained, load_pretrained
from lrm_nerfstudio.scripts.import_weights import ImportWeightsConfig, entrypoint, main
from lrm_nerfstudio.scripts.reconstruct import OutputOptions, ReconstructConfig
from lrm_nerfstudio.scripts.reconstruct import main as reconstruct

FIXTURES = Path(__file__).parents[1] / "fixtures" / "reference"
TRIPOSR = FIXTURES / "triposr_small"
OPENLRM = FIXTURES / "openlrm_split"


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    for p in dst.iterdir():
        p.chmod(0o644)
    return dst


def _error_of(family: str, folder: Path, tmp_path: Path, capsys) -> str:
    out = tmp_path / "out.safetensors"
    assert main(ImportWeightsConfig(family, folder, output=out)) == 2
    assert not out.exists()  # never a partial file
    return capsys.readouterr().out.replace("\n", "")


@pytest.mark.parametrize("family,folder", [("triposr", TRIPOSR), ("openlrm", OPENLRM)])
def test_import_round_trip_through_weights_file(family, folder, tmp_path, capsys):
    out = tmp_path / f"{family}.safetensors"
    assert main(ImportWeightsConfig(family, folder, output=out)) == 0
    printed = capsys.readouterr().out
    assert ("CC BY-NC 4.0" in printed) == (family == "openlrm")
    loaded = load_pretrained(out)
    assert loaded.method == f"lrm-{family}" and loaded.step == 0 and loaded.source.family == family
    weights_file = folder / ("model.ckpt" if family == "triposr" else "model.safetensors")
    assert loaded.source.sha256 == sha256_of(weights_file)  # the file says which release checkpoint it came from
    from_file, from_folder = from_pretrained(out, device="cpu"), from_pretrained(folder, device="cpu")
    assert not from_file.training
    size = loaded.model.processor.resolution
    images = torch.rand(1, 3, size, size, generator=torch.Generator().manual_seed(0))
    cams = canonical_source_camera()[None]
    with torch.no_grad():
        assert torch.equal(from_file.predict_triplanes(images, cams), from_folder.predict_triplanes(images, cams))


def test_wrong_and_incomplete_folders(tmp_path, capsys):
    assert "config.yaml" in _error_of("triposr", OPENLRM, tmp_path, capsys)  # an OpenLRM folder named TripoSR
    empty = tmp_path / "empty"
    empty.mkdir()
    assert "config.json" in _error_of("openlrm", empty, tmp_path, capsys)
    assert "not a folder" in _error_of("triposr", tmp_path / "nowhere", tmp_path, capsys)
    partial = _copy(TRIPOSR, tmp_path / "partial")
    (partial / "model.ckpt").unlink()
    msg = _error_of("triposr", partial, tmp_path, capsys)
    assert str(partial / "model.ckpt") in msg and "missing" in msg


def test_missing_extra_and_misshaped_keys(tmp_path, capsys):
    state = torch.load(TRIPOSR / "model.ckpt", weights_only=True)
    cases = {
        "missing": ({k: v for k, v in state.items() if k != "backbone.proj_in.weight"}, "missing key"),
        "extra": ({**state, "backbone.extra.weight": torch.zeros(2)}, "unexpected key"),
        "shape": ({**state, "decoder.layers.2.weight": torch.zeros(16, 15)}, "has shape (16, 15)"),
    }
    for name, (bad, problem) in cases.items():
        folder = _copy(TRIPOSR, tmp_path / name)
        torch.save(bad, folder / "model.ckpt")
        msg = _error_of("triposr", folder, tmp_path, capsys)
        key = {"missing": "backbone.proj_in.weight", "extra": "backbone.extra.weight"}.get(
            name, "decoder.layers.2.weight"
        )
        assert str(folder / "model.ckpt") in msg and problem in msg and key in msg, msg

    sd = load_file(OPENLRM / "model.safetensors")
    folder = _copy(OPENLRM, tmp_path / "openlrm_missing")
    save_file({k: v for k, v in sd.items() if k != "transformer.layers.1.cross_attn.k_proj_weight"},
              folder / "model.safetensors")  # fmt: skip
    msg = _error_of("openlrm", folder, tmp_path, capsys)
    assert "missing key" in msg and "transformer.layers.1.cross_attn.k_proj_weight" in msg


def test_corrupt_files(tmp_path, capsys):
    folder = _copy(TRIPOSR, tmp_path / "corrupt_ckpt")
    data = (folder / "model.ckpt").read_bytes()
    (folder / "model.ckpt").write_bytes(data[: len(data) // 2])
    msg = _error_of("triposr", folder, tmp_path, capsys)
    assert str(folder / "model.ckpt") in msg and "unreadable" in msg
    folder = _copy(OPENLRM, tmp_path / "corrupt_st")
    (folder / "model.safetensors").write_bytes(b"\x00garbage" * 10)
    assert "not a readable safetensors" in _error_of("openlrm", folder, tmp_path, capsys)
    folder = _copy(OPENLRM, tmp_path / "corrupt_json")
    (folder / "config.json").write_text("{not json")
    msg = _error_of("openlrm", folder, tmp_path, capsys)
    assert str(folder / "config.json") in msg and "JSON" in msg


def test_cli_exit_code_and_from_pretrained_error(tmp_path, monkeypatch, capsys):
    # the console script's own parsing and exit code, in-process (a subprocess would only add start-up time)
    argv = ["lrm-import-weights", "openlrm", str(tmp_path), "--output", str(tmp_path / "x.safetensors")]
    monkeypatch.setattr(sys, "argv", argv)
    with pytest.raises(SystemExit) as exit_info:
        entrypoint()
    assert exit_info.value.code == 2 and "config.json" in capsys.readouterr().out
    with pytest.raises(ModelLoadError, match="not a released model folder"):
        from_pretrained(tmp_path, device="cpu")


def test_reconstruct_with_imported_triposr_opens_in_nerfstudio(tmp_path):
    weights = tmp_path / "triposr.safetensors"
    assert main(ImportWeightsConfig("triposr", TRIPOSR, output=weights)) == 0
    out = tmp_path / "recon"
    options = OutputOptions(resolution=32, turntable_frames=2, turntable_resolution=16)
    assert reconstruct(ReconstructConfig([TRIPOSR / "input.png"], weights=weights, output_dir=out, output=options)) == 0
    folder = out / "input"
    source = load_file(folder / "triplane.safetensors")["triplane"]
    _, pipeline, _, _ = eval_setup(folder / "config.yml", test_mode="test")  # what ns-viewer / ns-export do
    torch.testing.assert_close(pipeline.model.display_triplanes().cpu(), source, atol=1e-5, rtol=1e-4)
    # TripoSR's preset: the source image is on grey 0.5 (its corner pixel), at cond_image_size
    from PIL import Image

    src = Image.open(folder / "source.png")
    assert src.size == (64, 64) and abs(src.getpixel((0, 0))[0] - 128) <= 1


@pytest.mark.skipif(not os.environ.get("TRIPOSR_DIR"), reason="set TRIPOSR_DIR to a stabilityai/TripoSR folder")
def test_real_triposr_weights():
    model = from_pretrained(os.environ["TRIPOSR_DIR"], device="cpu")
    assert sum(p.numel() for p in model.parameters()) == 419_275_628 - 768 * 768 - 768  # pooler dropped
    with torch.no_grad():
        planes = model.predict_triplanes(torch.full((1, 3, 512, 512), 0.5), canonical_source_camera()[None])
    assert planes.shape == (1, 3, 40, 64, 64) and torch.isfinite(planes).all()


@pytest.mark.skipif(not os.environ.get("OPENLRM_DIR"), reason="set OPENLRM_DIR to a zxhezexin/openlrm-*-1.1 folder")
def test_real_openlrm_weights():
    model = from_pretrained(os.environ["OPENLRM_DIR"], device="cpu")
    size = 224 if model.encoder.out_dim == 384 else 336
    with torch.no_grad():
        planes = model.predict_triplanes(torch.ones(1, 3, size, size), canonical_source_camera()[None])
    assert planes.shape[:2] == (1, 3) and planes.shape[-1] == 64 and torch.isfinite(planes).all()
