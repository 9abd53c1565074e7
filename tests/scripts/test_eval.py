"""`lrm-eval` end to end on a briefly trained model (folder and tar-shard datasets), and every bad input."""

from __future__ import annotations

import csv
import json
import math
import shutil
from pathlib import Path

import pytest
import torch
import trimesh
from conftest import tiny_trainer_config
from PIL import Image

from lrm_nerfstudio.data.shards import PackShardsConfig, pack_shards
from lrm_nerfstudio.scripts.eval import EvalConfig, main
from lrm_nerfstudio.scripts.export_weights import ExportWeightsConfig
from lrm_nerfstudio.scripts.export_weights import main as export_weights

FAST = {"mesh_resolution": 32, "views_per_object": 3, "num_samples": 2000, "report_views": 2}


@pytest.fixture(scope="module")
def trained_run(procedural_dataset, tmp_path_factory) -> Path:
    """lrm-tiny (shrunk) trained for 4 steps by nerfstudio's trainer; returns its config.yml."""
    config = tiny_trainer_config(
        procedural_dataset,
        output_dir=tmp_path_factory.mktemp("run"),
        max_num_iterations=4,
        vis="tensorboard",
        steps_per_save=1000,
        steps_per_eval_batch=1000,
        steps_per_eval_image=1000,
        steps_per_eval_all_images=1000,
    )
    config.set_timestamp()
    config.save_config()
    torch.manual_seed(0)
    trainer = config.setup(local_rank=0, world_size=1)
    trainer.setup()
    trainer.train()
    return config.get_base_dir() / "config.yml"


def _numbers(value) -> list[float]:
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return []
    if isinstance(value, (int, float)):
        return [float(value)]
    if isinstance(value, dict):
        return [x for v in value.values() for x in _numbers(v)]
    if isinstance(value, list):
        return [x for v in value for x in _numbers(v)]
    return []


def _copy_objects(src: Path, dst: Path, ids: list[str], split: str = "test") -> Path:
    dst.mkdir(parents=True)
    for oid in ids:
        shutil.copytree(src / oid, dst / oid)
    meta = json.loads((src / "dataset.json").read_text())
    meta["splits"] = {split: ids}
    (dst / "dataset.json").write_text(json.dumps(meta))
    return dst


def test_eval_end_to_end_folder_and_shards(trained_run, procedural_dataset, tmp_path, capsys):
    out = tmp_path / "eval"
    assert main(EvalConfig(load_config=trained_run, data=procedural_dataset, output_dir=out, split="val", **FAST)) == 0
    log = capsys.readouterr().out
    assert "[1/1]" in log  # one readable line per object, TTY or not

    data = json.loads((out / "metrics.json").read_text())
    assert set(data) == {"summary", "objects", "baselines", "settings"}
    (obj,) = data["objects"]
    oid = json.loads((procedural_dataset / "dataset.json").read_text())["splits"]["val"][0]
    assert obj["id"] == oid and obj["views"] == [1, 2, 3]
    for key in ("psnr", "ssim", "masked_psnr", "mask_iou", "chamfer_l1", "fscore@0.05", "fscore@0.1", "fscore@0.2",
                "normal_consistency", "encode_s", "decode_s", "mesh_s", "num_triangles"):  # fmt: skip
        assert obj[key] is not None and math.isfinite(obj[key]), key
    assert set(obj["geometry"]) == {"none", "box", "search"}
    assert obj["num_triangles"] > 0 and not obj["empty_mesh"] and obj["notes"] == []
    ellipsoid, background = obj["baselines"]["ellipsoid"], obj["baselines"]["background"]
    assert ellipsoid["fscore@0.1"] is not None and ellipsoid["psnr"] is not None
    assert len(ellipsoid["semi_axes_xyz"]) == 3 and all(0 < a <= 1.5 for a in ellipsoid["semi_axes_xyz"])
    assert background["mask_iou"] == 0.0 and background.get("chamfer_l1") is None
    assert all(math.isfinite(x) for x in _numbers(data))  # metrics.json holds finite numbers only (or null)
    assert data["summary"]["num_objects"] == 1 and data["summary"]["num_with_geometry"] == 1
    assert data["summary"]["psnr"] == pytest.approx(obj["psnr"])
    assert set(data["baselines"]) == {"ellipsoid", "background"}
    assert data["settings"]["split"] == "val" and data["settings"]["align"] == "none"
    assert data["settings"]["lpips"].startswith("off")  # no VGG weights in the test environment: said, not crashed

    rows = list(csv.DictReader((out / "metrics.csv").open()))
    assert len(rows) == 1 and rows[0]["id"] == oid
    assert float(rows[0]["fscore@0.1"]) == pytest.approx(obj["fscore@0.1"])
    assert float(rows[0]["ellipsoid/chamfer_l1"]) == pytest.approx(ellipsoid["chamfer_l1"])

    mesh = trimesh.load(out / oid / "mesh.ply", force="mesh")
    assert len(mesh.faces) == obj["num_triangles"]
    assert len(trimesh.load(out / oid / "baseline_ellipsoid.ply", force="mesh").faces) > 0
    report = (out / "report.md").read_text()
    assert "| model |" in report and "| ellipsoid baseline |" in report and "| background baseline |" in report
    for name in ("source", "views", "meshes"):
        assert f"({oid}/{name}.png)" in report
        with Image.open(out / oid / f"{name}.png") as image:
            assert image.size[0] > 0
    assert not list(out.rglob("*.tmp"))  # every file written atomically, no temporaries left

    # the same model as an lrm-export-weights file: the same numbers
    weights = tmp_path / "model.safetensors"
    export_weights(ExportWeightsConfig(load_config=trained_run, output=weights))
    out_w = tmp_path / "eval-weights"
    assert (
        main(
            EvalConfig(weights=weights, data=procedural_dataset, output_dir=out_w, split="val", pictures=False, **FAST)
        )
        == 0
    )
    (obj_w,) = json.loads((out_w / "metrics.json").read_text())["objects"]
    assert obj_w["psnr"] == pytest.approx(obj["psnr"], rel=1e-6) and "pictures" not in obj_w

    # the same objects packed into tar shards: ground-truth meshes are read from the shard, same numbers
    shards = pack_shards(PackShardsConfig(dataset=procedural_dataset, output=tmp_path / "shards", num_shards=2))
    out2 = tmp_path / "eval-shards"
    textured = {"texture_resolution": 32, "target_faces": 400}  # and a textured GLB beside the PLY
    assert main(EvalConfig(load_config=trained_run, data=shards, output_dir=out2, split="val", **FAST, **textured)) == 0
    (obj2,) = json.loads((out2 / "metrics.json").read_text())["objects"]
    glb = trimesh.load(out2 / obj2["files"]["mesh_glb"], force="mesh")
    assert glb.visual.kind == "texture" and 0 < len(glb.faces) <= 400
    for key in ("psnr", "mask_iou", "chamfer_l1", "fscore@0.1", "normal_consistency"):
        assert obj2[key] == pytest.approx(obj[key], rel=1e-6), key
    assert obj2["baselines"]["ellipsoid"]["chamfer_l1"] == pytest.approx(ellipsoid["chamfer_l1"], rel=1e-6)


def test_eval_bad_objects_are_notes_and_nothing_else_is_lost(trained_run, procedural_dataset, tmp_path):
    ids = json.loads((procedural_dataset / "dataset.json").read_text())["splits"]["train"][:5]
    outside, no_mesh, missing, corrupt, unreadable = ids
    data = _copy_objects(procedural_dataset, tmp_path / "ds", ids)
    image = data / unreadable / "images" / "002.png"
    image.write_bytes(image.read_bytes()[:200])  # the header still reads (setup passes); the pixels do not
    transforms = data / no_mesh / "transforms.json"
    meta = json.loads(transforms.read_text())
    del meta["mesh_path"]
    transforms.write_text(json.dumps(meta))
    (data / missing / "mesh.ply").unlink()
    (data / corrupt / "mesh.ply").write_bytes(b"ply\nthis is not a mesh\n")
    big = trimesh.load(data / outside / "mesh.ply", process=False)
    big.apply_scale(3.0).export(data / outside / "mesh.ply")

    out = tmp_path / "eval"
    assert main(EvalConfig(load_config=trained_run, data=data, output_dir=out, **FAST)) == 1  # one object unreadable
    result = json.loads((out / "metrics.json").read_text())
    assert list(result["settings"]["failed"]) == [unreadable] and "002.png" in result["settings"]["failed"][unreadable]
    assert result["summary"]["num_failed"] == 1
    objects = {o["id"]: o for o in result["objects"]}
    assert set(objects) == set(ids) - {unreadable}
    for o in objects.values():  # rendering is scored for every object, whatever happened to its mesh
        assert math.isfinite(o["psnr"]) and math.isfinite(o["baselines"]["ellipsoid"]["psnr"])
    assert "no mesh_path" in " ".join(objects[no_mesh]["notes"]) and objects[no_mesh]["chamfer_l1"] is None
    assert "does not exist" in " ".join(objects[missing]["notes"]) and objects[missing]["chamfer_l1"] is None
    assert "cannot read the mesh" in " ".join(objects[corrupt]["notes"]) and objects[corrupt]["chamfer_l1"] is None
    assert str(data / corrupt / "mesh.ply") in " ".join(objects[corrupt]["notes"])
    assert "outside the [-1, 1]³ box" in " ".join(objects[outside]["notes"])
    assert objects[outside]["chamfer_l1"] is not None  # still scored (box and search alignments are meaningful)
    report = (out / "report.md").read_text()
    for oid in ids[:4]:
        assert f"`{oid}`" in report
    assert "note: no ground-truth mesh" in report

    # an empty predicted mesh (a level above every density): reported, counted, F = 0, never a crash
    out = tmp_path / "empty"
    config = EvalConfig(load_config=trained_run, data=data, output_dir=out, iso_level=1e9, max_objects=1, **FAST)
    assert main(config) == 0
    result = json.loads((out / "metrics.json").read_text())
    (outside_obj,) = result["objects"]
    assert outside_obj["id"] == outside
    assert outside_obj["empty_mesh"] and outside_obj["num_triangles"] == 0
    assert outside_obj["fscore@0.1"] == 0.0 and outside_obj["chamfer_l1"] is None
    assert any("empty predicted mesh" in n for n in outside_obj["notes"])
    assert result["summary"]["num_empty_meshes"] == 1 and result["summary"]["fscore@0.1"] == 0.0
    assert not (out / outside / "mesh.ply").exists() and (out / outside / "baseline_ellipsoid.ply").is_file()


def test_eval_refuses_missing_or_empty_split_and_bad_model(trained_run, procedural_dataset, tmp_path, capsys):
    ids = json.loads((procedural_dataset / "dataset.json").read_text())["splits"]["train"][:1]
    only_train = _copy_objects(procedural_dataset, tmp_path / "train-only", ids, split="train")
    assert main(EvalConfig(load_config=trained_run, data=only_train, output_dir=tmp_path / "a")) == 2
    err = " ".join(capsys.readouterr().out.split())
    assert "split 'test' does not exist or is empty" in err and "train" in err
    assert not (tmp_path / "a" / "metrics.json").exists()

    meta = json.loads((only_train / "dataset.json").read_text())
    meta["splits"]["test"] = []
    (only_train / "dataset.json").write_text(json.dumps(meta))
    assert main(EvalConfig(load_config=trained_run, data=only_train, output_dir=tmp_path / "b")) == 2
    assert "split 'test' is empty" in " ".join(capsys.readouterr().out.split())

    assert main(EvalConfig(load_config=trained_run, data=tmp_path / "nowhere", output_dir=tmp_path / "c")) == 2
    assert "not a dataset folder" in " ".join(capsys.readouterr().out.split())
    assert (
        main(EvalConfig(load_config=tmp_path / "missing.yml", data=procedural_dataset, output_dir=tmp_path / "d")) == 2
    )
    assert main(EvalConfig(data=procedural_dataset, output_dir=tmp_path / "e")) == 2
    assert "exactly one of --load-config" in " ".join(capsys.readouterr().out.split())
    config = EvalConfig(load_config=trained_run, data=procedural_dataset, output_dir=tmp_path / "f", mesh_resolution=1)
    assert main(config) == 2
    assert "--mesh-resolution must be at least 2" in capsys.readouterr().out
    config = EvalConfig(load_config=trained_run, data=procedural_dataset, output_dir=tmp_path / "g", target_faces=0)
    assert main(config) == 2
    assert "--target-faces must be > 0" in capsys.readouterr().out


TIME_KEYS = ("encode_s", "decode_s", "mesh_s", "render_s", "geometry_s")


def _untimed(record: dict) -> dict:
    return {k: v for k, v in record.items() if k not in TIME_KEYS}


@pytest.mark.slow
def test_eval_shards_merge_split_all_and_layouts(trained_run, tmp_path, capsys):
    """Two lrm-eval shards into one folder, then the merge: the unsharded run's metrics (timings aside); a merge with
    a shard missing names its objects; the same objects as OpenLRM renders and as nerfstudio-data folders score the
    same per object."""
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "data"))
    from layout_fixture import all_ids, write_nerfstudio_folders, write_openlrm

    from lrm_nerfstudio.generate.generate import GenerateConfig
    from lrm_nerfstudio.generate.generate import main as generate
    from lrm_nerfstudio.generate.renderer import CameraSamplerConfig
    from lrm_nerfstudio.io.sharding import Shard

    src = tmp_path / "src"  # one focal length per object, as OpenLRM's intrinsics.npy holds
    cameras = CameraSamplerConfig(focal_range=(0.75, 0.75), distance_range=(2.0, 2.4))
    generate(GenerateConfig(output=src, num_objects=4, num_views=3, resolution=48, workers=1, progress=False,
                            cameras=cameras))  # fmt: skip
    ids = all_ids(src)
    fast = {**FAST, "pictures": False, "split": "all", "views_per_object": 2}
    assert main(EvalConfig(load_config=trained_run, data=src, output_dir=tmp_path / "whole", **fast)) == 0
    ref = json.loads((tmp_path / "whole" / "metrics.json").read_text())
    assert [o["id"] for o in ref["objects"]] == ids  # --split all: every object, train, val and test

    out = tmp_path / "sharded"
    assert main(EvalConfig(load_config=trained_run, data=src, output_dir=out, shard="1/2", **fast)) == 0
    assert not (out / "metrics.json").exists()
    assert sorted(p.parent.name for p in out.glob("*/record.json")) == Shard(1, 2).select(ids) == ["000003"]
    capsys.readouterr()
    assert main(EvalConfig(load_config=trained_run, data=src, output_dir=out, **fast)) == 1  # shard 0 missing
    text = " ".join(capsys.readouterr().out.split())
    assert "3 of 4 objects are missing" in text and all(f"{oid} (shard 0/2)" in text for oid in Shard(0, 2).select(ids))
    assert not (out / "metrics.json").exists()
    assert main(EvalConfig(load_config=trained_run, data=src, output_dir=out, shard="0/2", **fast)) == 0
    assert main(EvalConfig(load_config=trained_run, data=src, output_dir=out, **fast)) == 0
    merged = json.loads((out / "metrics.json").read_text())
    assert [_untimed(o) for o in merged["objects"]] == [_untimed(o) for o in ref["objects"]]
    assert _untimed(merged["summary"]) == _untimed(ref["summary"]) and merged["baselines"] == ref["baselines"]
    assert (out / "report.md").is_file() and (out / "metrics.csv").is_file() and not (out / ".shards").exists()

    for kind, write in (("openlrm", write_openlrm), ("nerfstudio-folders", write_nerfstudio_folders)):
        root = write(src, tmp_path / kind, ids)
        assert main(EvalConfig(load_config=trained_run, data=root, output_dir=tmp_path / f"e-{kind}", **fast)) == 0
        got = {o["id"]: o for o in json.loads((tmp_path / f"e-{kind}" / "metrics.json").read_text())["objects"]}
        assert set(got) == set(ids)
        for want in ref["objects"]:
            keys = ("psnr", "ssim", "masked_psnr", "mask_iou", "views")
            keys += ("chamfer_l1", "fscore@0.1") if kind == "nerfstudio-folders" else ()  # OpenLRM has no mesh
            assert {k: got[want["id"]][k] for k in keys} == {k: want[k] for k in keys}, (kind, want["id"])
