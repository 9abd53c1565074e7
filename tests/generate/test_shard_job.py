"""`--shard I/N` for lrm-generate and lrm-render-meshes: shards as separate processes into one folder, then the merge
(the same command without --shard) gives the bytes of an unsharded run; a missing shard is named."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import trimesh

from lrm_nerfstudio.generate.generate import GenerateConfig, object_id
from lrm_nerfstudio.generate.generate import main as generate
from lrm_nerfstudio.generate.render_meshes import RenderMeshesConfig
from lrm_nerfstudio.generate.render_meshes import main as render_meshes
from lrm_nerfstudio.io.sharding import Shard, parse_shard, stable_hash

GEN_ARGS = ["--num-objects", "6", "--num-views", "3", "--resolution", "16", "--seed", "5", "--workers", "1"]


def _tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", *args], check=False, capture_output=True, text=True, timeout=300)


def test_stable_hash_and_shard_parsing():
    assert stable_hash("000000") == 0x91B4D142823F7D20  # SHA-256's first 8 bytes: the same on every machine
    assert parse_shard(None) is None and parse_shard("3/64") == Shard(3, 64)
    for bad in ("64/64", "1", "-1/4", "a/b", "1/0"):
        with pytest.raises(ValueError, match="--shard"):
            parse_shard(bad)
    ids = [object_id(i) for i in range(200)]
    parts = [Shard(i, 4).select(ids) for i in range(4)]
    assert sorted(oid for p in parts for oid in p) == ids and all(30 < len(p) < 70 for p in parts)


@pytest.mark.slow
def test_generate_two_shard_processes_then_merge_equal_unsharded(tmp_path):
    module = "lrm_nerfstudio.generate.generate"
    single, sharded = tmp_path / "single", tmp_path / "sharded"
    assert _cli(module, "--output", str(single), *GEN_ARGS, "--no-progress").returncode == 0
    command = [sys.executable, "-m", module, "--output", str(sharded), *GEN_ARGS, "--no-progress"]
    procs = [subprocess.Popen([*command, "--shard", f"{i}/2"]) for i in range(2)]
    assert [p.wait(timeout=300) for p in procs] == [0, 0]
    assert not (sharded / "dataset.json").exists()  # shared files only from the merge
    made = {p.name for p in sharded.iterdir() if not p.name.startswith(".")}
    assert made == {object_id(i) for i in range(6)}
    merge = _cli(module, "--output", str(sharded), *GEN_ARGS)
    assert merge.returncode == 0, merge.stderr
    assert "merged the shards: 0 objects rendered" in " ".join(merge.stderr.split())
    assert _tree(sharded) == _tree(single)  # images, depth, normals, transforms.json, mesh.ply, dataset.json


def test_each_shard_makes_only_its_objects_and_merge_names_missing(tmp_path):
    root = tmp_path / "ds"
    kwargs = {"output": root, "num_objects": 6, "num_views": 2, "resolution": 16, "workers": 1, "progress": False}
    summary = generate(GenerateConfig(**kwargs, shard="1/2"))
    mine = Shard(1, 2).select([object_id(i) for i in range(6)])
    assert {p.name for p in root.iterdir() if not p.name.startswith(".")} == set(mine)
    assert summary["rendered"] == len(mine) and summary["shard"] == "1/2"
    result = _cli("lrm_nerfstudio.generate.generate", "--output", str(root), "--num-objects", "6", "--num-views", "2",
                  "--resolution", "16", "--workers", "1", "--no-progress")  # fmt: skip
    assert result.returncode == 1
    theirs = Shard(0, 2).select([object_id(i) for i in range(6)])
    text = " ".join(result.stderr.split())
    assert f"{len(theirs)} of 6 objects are missing" in text and "shards not finished: 0/2" in text
    assert all(f"{oid} (shard 0/2)" in text for oid in theirs)
    assert not (root / "dataset.json").exists() and "Traceback" not in result.stderr
    # a shard run with other settings is refused by the merge
    generate(GenerateConfig(**kwargs, shard="0/2"))
    with pytest.raises(ValueError, match="different generator config"):
        generate(GenerateConfig(**{**kwargs, "seed": 9}))
    assert generate(GenerateConfig(**kwargs))["merged"]
    assert not (root / ".shards").exists()


def test_render_meshes_shards_merge_equal_unsharded_with_bad_mesh(tmp_path):
    src = tmp_path / "meshes"
    src.mkdir()
    for i in range(4):
        trimesh.creation.box(extents=(1 + i * 0.2, 1, 0.5)).export(src / f"box{i}.stl")
    (src / "garbage.obj").write_text("not a mesh\x00\n")
    kw = {"input": src, "num_views": 2, "resolution": 16, "workers": 1, "progress": False}
    render_meshes(RenderMeshesConfig(output=tmp_path / "single", **kw))
    out = tmp_path / "sharded"
    for i in range(3):
        render_meshes(RenderMeshesConfig(output=out, shard=f"{i}/3", **kw))
    merged = render_meshes(RenderMeshesConfig(output=out, **kw))
    assert merged["merged"] and merged["rendered"] == 0 and merged["bad"] == 1
    assert "garbage.obj" in merged["bad_meshes"][0]
    assert _tree(out) == _tree(tmp_path / "single")
