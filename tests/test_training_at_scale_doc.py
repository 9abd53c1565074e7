"""Every command of docs/TRAINING_AT_SCALE.md's data section parses with the real CLI configs (flags and --shard
values), the SLURM script's and xargs' shard placeholders filled in. What the commands do is tested in
tests/generate/test_shard_job.py, tests/data/test_layouts.py and tests/scripts/test_eval.py."""

from __future__ import annotations

import re
import shlex
from copy import deepcopy
from pathlib import Path

import pytest
import tyro

from lrm_nerfstudio.data.shards import PackShardsConfig
from lrm_nerfstudio.generate.generate import GenerateConfig
from lrm_nerfstudio.generate.render_meshes import RenderMeshesConfig
from lrm_nerfstudio.io.sharding import parse_shard
from lrm_nerfstudio.scripts.eval import EvalConfig

DOC = Path(__file__).resolve().parents[1] / "docs" / "TRAINING_AT_SCALE.md"
CONFIGS = {"lrm-generate": GenerateConfig, "lrm-render-meshes": RenderMeshesConfig, "lrm-eval": EvalConfig,
           "lrm-pack-shards": PackShardsConfig}  # fmt: skip
PLACEHOLDERS = {"$SLURM_ARRAY_TASK_ID": "63", "{}": "7"}


def doc_commands() -> list[list[str]]:
    """The `uv run ...` commands of the section's bash blocks, also those inside `sbatch --wrap` and `xargs`."""
    text = DOC.read_text()
    section = text[text.index("## Data on a cluster") :]
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", section, flags=re.DOTALL):
        for line in block.splitlines():
            if not line or line.startswith("#"):
                continue
            for key, value in PLACEHOLDERS.items():
                line = line.replace(key, value)
            words = shlex.split(line)
            for candidate in [words, *(shlex.split(w) for w in words if w.startswith("uv run "))]:
                for i in range(len(candidate) - 2):
                    if candidate[i : i + 2] == ["uv", "run"]:
                        commands.append(candidate[i + 2 :])
    return commands


COMMANDS = doc_commands()


def test_section_has_the_cluster_commands():
    names = [c[0] for c in COMMANDS]
    assert {"lrm-generate", "lrm-render-meshes", "lrm-eval", "lrm-pack-shards", "ns-train"} <= set(names)
    shards = [c[c.index("--shard") + 1] for c in COMMANDS if "--shard" in c]
    assert {"63/64", "7/8", "0/16"} <= set(shards)


@pytest.mark.parametrize("words", COMMANDS, ids=[" ".join(w[:1] + w[-2:]) for w in COMMANDS])
def test_doc_command_parses(words):
    name, args = words[0], words[1:]
    if name == "ns-train":
        from lrm_nerfstudio.lrm_config import lrm_method

        assert args[0] == "lrm"
        config = tyro.cli(type(lrm_method.config), default=deepcopy(lrm_method.config), args=args[1:])
        parser = config.pipeline.datamanager.dataparser
        assert parser.uids is not None and parser.val_uids is not None and parser.extra_roots
        return
    config = tyro.cli(CONFIGS[name], args=args)
    parse_shard(getattr(config, "shard", None))  # a valid I/N (or none: the merge)
