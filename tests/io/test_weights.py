"""Weights format v2: round trips are exact, loading runs no code, every bad field is a clear error naming the
file and the field, and version-1 files are refused with their upgrade command (tested on a real v1 file)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
import tyro
from conftest import tiny_trainer_config
from PIL import Image
from safetensors import safe_open
from safetensors.torch import save_file

from lrm_nerfstudio.cameras import canonical_source_camera
from lrm_nerfstudio.io.checkpoints import ModelLoadError
from lrm_nerfstudio.io.plain_data import to_plain
from lrm_nerfstudio.io.weights import METADATA_KEYS, WeightsSource, upgrade_command
from lrm_nerfstudio.model.build import new_model
from lrm_nerfstudio.model.processor import ProcessorConfig
from lrm_nerfstudio.pretrained import Pretrained, from_pretrained, load_pretrained, save_pretrained
from lrm_nerfstudio.scripts.export_weights import ExportWeightsConfig
from lrm_nerfstudio.scripts.export_weights import main as export_weights

V1_FIXTURE = Path(__file__).parents[1] / "fixtures" / "weights_v1" / "tiny_v1.safetensors"
YAML_PAYLOAD = '!!python/object/apply:os.system ["touch {marker}"]'


def _tiny_pretrained(seed: int = 0) -> Pretrained:
    config = tiny_trainer_config(Path("unused"))
    processor = ProcessorConfig(resolution=64, background=(0.5, 0.5, 0.5), resize="bicubic_align_corners")
    lift = replace(config.pipeline.model.pixel_lift, enabled=True)
    model_config = replace(config.pipeline.model, pixel_lift=lift, processor=processor)
    torch.manual_seed(seed)
    model = new_model(model_config)
    return Pretrained(model_config, "lrm-tiny", WeightsSource("trained", 11, None), model.state_dict())


@pytest.fixture(scope="module")
def tiny_file(tmp_path_factory) -> tuple[Pretrained, Path]:
    pretrained = _tiny_pretrained()
    return pretrained, save_pretrained(tmp_path_factory.mktemp("weights") / "tiny.safetensors", pretrained)


def _read(path: Path) -> tuple[dict[str, str], dict[str, torch.Tensor]]:
    with safe_open(str(path), framework="pt") as fh:
        return dict(fh.metadata()), {k: fh.get_tensor(k) for k in fh.keys()}  # noqa: SIM118


def _rewrite(src: Path, dst: Path, **meta: str) -> Path:
    metadata, tensors = _read(src)
    metadata.update(meta)
    save_file(tensors, str(dst), metadata=metadata)
    return dst


def test_round_trip_gives_equal_configs_tensors_and_triplanes(tiny_file):
    pretrained, path = tiny_file
    loaded = load_pretrained(path)
    assert loaded.model == replace(pretrained.model, init_from=None) and loaded.model.pixel_lift.enabled
    assert loaded.model.processor == pretrained.model.processor and loaded.method == "lrm-tiny"
    assert loaded.model.processor.background == (0.5, 0.5, 0.5)  # the model's input contract travels with it
    metadata, _ = _read(path)  # the file keeps it in its own field, not twice
    assert json.loads(metadata["processor"])["resize"] == "bicubic_align_corners"
    assert "processor" not in json.loads(metadata["model"])
    assert loaded.source == WeightsSource("trained", 11, None)
    model = from_pretrained(path, device="cpu")
    want = pretrained.state
    got = model.state_dict()
    assert set(got) == set(want)
    for key, value in want.items():
        assert torch.equal(got[key], value), key
    reference = new_model(loaded.model).eval()
    reference.load_state_dict(want)
    images, cameras = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(1)), canonical_source_camera()
    with torch.no_grad():
        assert torch.equal(
            model.predict_triplanes(images, cameras.expand(2, 16)),
            reference.predict_triplanes(images, cameras.expand(2, 16)),
        )


def test_file_holds_plain_data_and_stable_names(tiny_file):
    _, path = tiny_file
    meta, tensors = _read(path)
    assert sorted(meta) == sorted(METADATA_KEYS) and meta["version"] == "2"
    for key in ("model", "processor", "source", "written_by"):
        json.loads(meta[key])  # every section is JSON
    assert "!!" not in str(meta) and "lrm_nerfstudio." not in str(meta) and "_target" not in str(meta)
    assert set(json.loads(meta["written_by"])) == {"lrm_nerfstudio", "torch", "transformers"}
    # no transformers-internal module names: the file fits any transformers release the mapping knows
    for internal in ("backbone", "q_proj", "layernorm_before", "encoder.layer.", ".layers.", "attention.attention"):
        assert not any(internal in key for key in tensors if key.startswith("encoder.")), internal
    assert "encoder.vit.blocks.0.attn.q.weight" in tensors and "encoder.vit.patch_embed.weight" in tensors


@pytest.mark.parametrize("architecture", ["vit", "dinov2", "dinov2_registers"])
def test_stable_names_round_trip_exactly(architecture):
    from lrm_nerfstudio.io.state_keys import model_state, stable_state

    config = tiny_trainer_config(Path("unused")).pipeline.model
    config = replace(config, encoder=replace(config.encoder, architecture=architecture, patch_size=8))
    state = new_model(config).state_dict()
    stable = stable_state(state)
    assert not any("backbone" in key for key in stable)
    back = model_state(stable, list(state))
    assert list(back) == list(state) and all(back[k] is state[k] for k in state)


JUNK = ['{"encoder": ', "[1, 2", "null", '"text"', "NaN-ish {]"]


@pytest.mark.parametrize("field", METADATA_KEYS)
def test_poisoned_metadata_runs_nothing_and_is_refused(field, tiny_file, tmp_path, monkeypatch):
    _, good = tiny_file
    marker = tmp_path / "MARKER"
    monkeypatch.chdir(tmp_path)
    values = [YAML_PAYLOAD.format(marker=marker)] + (
        JUNK if field in ("model", "processor", "source", "written_by") else []
    )
    for i, value in enumerate(values):
        bad = _rewrite(good, tmp_path / f"bad{i}.safetensors", **{field: value})
        with pytest.raises(ModelLoadError) as info:
            load_pretrained(bad)
        message = str(info.value)
        assert message.startswith(str(bad)), message
        assert field in message or "format" in message, message
        assert "Traceback" not in message
    assert not marker.exists()


@pytest.mark.parametrize(
    "section,edit,field_path",
    [
        ("model", lambda d: d["transformer"].update(num_layers="2"), "model.transformer.num_layers"),
        ("model", lambda d: d["transformer"].update(num_layers=True), "model.transformer.num_layers"),
        ("model", lambda d: d["transformer"].update(extra=1), "model.transformer.extra"),
        ("model", lambda d: d["encoder"].pop("hidden_size"), "model.encoder.hidden_size"),
        ("model", lambda d: d.update(sampler="uniform"), "model.sampler"),
        ("model", lambda d: d.update(pixel_lift=[1]), "model.pixel_lift"),
        ("model", lambda d: d.update(_target="os.system"), "model._target"),
        ("processor", lambda d: d.update(background=[0.5, 0.5]), "processor.background"),
        ("processor", lambda d: d.update(resize="nearest"), "processor.resize"),
        ("source", lambda d: d.update(family="hub"), "source.family"),
    ],
)
def test_ill_typed_fields_are_named(section, edit, field_path, tiny_file, tmp_path):
    _, good = tiny_file
    data = json.loads(_read(good)[0][section])
    edit(data)
    bad = _rewrite(good, tmp_path / "bad.safetensors", **{section: json.dumps(data)})
    with pytest.raises(ModelLoadError, match=f"field {field_path}"):
        load_pretrained(bad)


def test_processor_is_read_from_its_own_field_only(tiny_file, tmp_path):
    _, good = tiny_file
    model = json.loads(_read(good)[0]["model"])
    model["processor"] = json.loads(_read(good)[0]["processor"]) | {"resolution": 512}  # a second, different copy
    bad = _rewrite(good, tmp_path / "bad.safetensors", model=json.dumps(model))
    with pytest.raises(ModelLoadError, match="field model.processor: not allowed"):
        load_pretrained(bad)
    processor = json.loads(_read(good)[0]["processor"]) | {"resolution": 32}
    small = _rewrite(good, tmp_path / "small.safetensors", processor=json.dumps(processor))
    assert load_pretrained(small).model.processor.resolution == 32  # the model config takes the file's processor


def test_unknown_metadata_field_and_newer_version_are_refused(tiny_file, tmp_path):
    _, good = tiny_file
    with pytest.raises(ModelLoadError, match="unknown metadata field 'code'"):
        load_pretrained(_rewrite(good, tmp_path / "extra.safetensors", code="print(1)"))
    with pytest.raises(ModelLoadError, match="version 3 is newer than this lrm-nerfstudio reads"):
        load_pretrained(_rewrite(good, tmp_path / "v3.safetensors", version="3"))


def test_poisoned_file_on_the_command_line_runs_nothing(tiny_file, tmp_path):
    _, good = tiny_file
    marker = tmp_path / "MARKER"
    bad = _rewrite(good, tmp_path / "bad.safetensors", model=YAML_PAYLOAD.format(marker=marker))
    image = tmp_path / "in.png"
    Image.fromarray(np.full((32, 32, 3), 200, np.uint8)).save(image)
    script = Path(sys.executable).parent / "lrm-reconstruct"
    out = subprocess.run(
        [str(script), str(image), "--weights", str(bad), "--output-dir", str(tmp_path / "out")],
        capture_output=True, text=True, timeout=300, check=False, cwd=tmp_path,
        env={**os.environ, "COLUMNS": "200"},
    )  # fmt: skip
    assert out.returncode == 2, out.stdout + out.stderr
    assert "field model: not JSON" in " ".join(out.stdout.split()) and "Traceback" not in out.stderr
    assert not marker.exists()


def test_v1_file_is_refused_with_its_upgrade_command(tmp_path, capsys):
    with pytest.raises(ModelLoadError) as info:
        load_pretrained(V1_FIXTURE)
    assert "can run code" in str(info.value) and upgrade_command(V1_FIXTURE) in str(info.value)

    new = tmp_path / "new.safetensors"
    assert export_weights(ExportWeightsConfig(upgrade=V1_FIXTURE, output=new)) == 2  # no flag: refused
    said = " ".join(capsys.readouterr().out.split())
    assert "evaluates its embedded YAML" in said and "can run code" in said and "--trust-embedded-yaml" in said
    assert not new.exists()

    # the printed command itself, as a user would paste it (NEW.safetensors replaced by a path here)
    words = upgrade_command(V1_FIXTURE).replace("NEW.safetensors", str(new)).split()
    assert words[0] == "lrm-export-weights"
    assert export_weights(tyro.cli(ExportWeightsConfig, args=words[1:])) == 0 and new.is_file()


def test_v1_upgrade_gives_identical_tensors_and_outputs(tmp_path):
    new = tmp_path / "new.safetensors"
    assert export_weights(ExportWeightsConfig(upgrade=V1_FIXTURE, output=new, trust_embedded_yaml=True)) == 0
    upgraded = load_pretrained(new)
    assert upgraded.method == "lrm-tiny" and upgraded.step == 7 and upgraded.model.pixel_lift.enabled
    assert upgraded.model.processor.resolution == 64  # from the v1 config's datamanager.source_resolution
    _, v1_state = _read(V1_FIXTURE)
    model = from_pretrained(new, device="cpu")
    got = model.state_dict()
    assert set(got) == set(v1_state)
    for key, value in v1_state.items():
        assert torch.equal(got[key], value), key
    reference = new_model(upgraded.model).eval()
    reference.load_state_dict(v1_state)  # the v1 tensors under their own (model) names
    images, cameras = (
        torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(2)),
        canonical_source_camera()[None],
    )
    with torch.no_grad():
        assert torch.equal(model.predict_triplanes(images, cameras), reference.predict_triplanes(images, cameras))
    assert to_plain(upgraded.model)["transformer"]["num_layers"] == 1
