"""experiments/demo_ablation.py: a two-step run of two candidates writes one table row each, with finite metrics."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import pytest
from lrm_run_helpers import load_script

SCRIPT = Path(__file__).resolve().parents[2] / "experiments" / "demo_ablation.py"


@pytest.mark.slow  # two lrm-tiny trainer set-ups and evaluations: about a minute
def test_two_candidates_two_steps(procedural_dataset, tmp_path):
    ablation = load_script("demo_ablation", "experiments")
    config = ablation.AblationConfig(
        data=procedural_dataset, output_dir=tmp_path, candidates=["bias-1", "bias-4"], steps=2, eval_max_objects=1
    )
    rows = ablation.main(config)
    assert [row["candidate"] for row in rows] == ["bias-1", "bias-4"]
    assert [json.loads(line) for line in (tmp_path / "results.jsonl").read_text().splitlines()] == rows
    for row in rows:
        assert row["steps"] == 2
        for key in ("psnr", "ssim", "background_psnr", "mask_iou", "init_accumulation", "train_s", "train_psnr"):
            assert math.isfinite(row[key]), key
        assert 0.0 <= row["mask_iou"] <= 1.0 and 0.0 <= row["train_mask_iou"] <= 1.0
    # the lower bias starts from a much emptier box
    assert rows[1]["init_accumulation"] < rows[0]["init_accumulation"] / 5
    table = (tmp_path / "results.md").read_text().splitlines()
    assert (
        len(table) == 4
        and "| seed |" in table[0]
        and table[0].endswith("| train PSNR | train IoU |")
        and table[2].startswith("| bias-1 |")
        and table[3].startswith("| bias-4 |")
    )


def test_unknown_candidate_is_named(tmp_path):
    ablation = load_script("demo_ablation", "experiments")
    with pytest.raises(ValueError, match="unknown candidate.*'nope'"):
        ablation.main(ablation.AblationConfig(data=tmp_path, output_dir=tmp_path / "o", candidates=["nope"]))


def test_every_candidate_applies_and_docs_name_only_known_ones():
    """Each candidate's edits reach real settings of the demo's trainer, and every runner command in
    experiments/TRAINING.md names candidates the runner has (with a description for its table)."""
    from lrm_nerfstudio.scripts.demo import DemoConfig, trainer_config

    ablation = load_script("demo_ablation", "experiments")
    for name, edits in ablation.CANDIDATES.items():
        trainer = trainer_config(DemoConfig(viewer=False))
        for edit in edits:
            edit(trainer)
        assert name in ablation.DESCRIPTIONS, name
    trainer = trainer_config(DemoConfig(viewer=False))
    ablation.CANDIDATES["objects-16-views-1"][0](trainer)
    assert trainer.pipeline.datamanager.objects_per_batch == 16
    with pytest.raises(AttributeError, match="objects_per_batchh"):
        ablation._set("pipeline.datamanager.objects_per_batchh", 3)(trainer)
    docs = (SCRIPT.parent / "TRAINING.md").read_text()
    named = [m.split() for m in re.findall(r"demo_ablation\.py [^\n]*--candidates ([^\n`]+)", docs)]
    assert len(named) >= 10
    for names in named:
        assert all(ablation.known(name) for name in names), names


def test_joined_candidates_apply_every_part_in_order():
    """'a+b' applies a's edits, then b's, and its table row names both settings; an unknown part is named."""
    from lrm_nerfstudio.scripts.demo import DemoConfig, trainer_config

    ablation = load_script("demo_ablation", "experiments")
    trainer = trainer_config(DemoConfig(viewer=False))
    for edit in ablation.edits("width-128+objects-16-views-1"):
        edit(trainer)
    assert trainer.pipeline.model.transformer.inner_dim == 128
    assert (trainer.pipeline.datamanager.objects_per_batch, trainer.pipeline.datamanager.target_views_per_object) == (
        16,
        1,
    )
    assert ablation.known("width-128+objects-16-views-1") and not ablation.known("width-128+nope")
    with pytest.raises(ValueError, match="unknown candidate.*width-128\\+nope"):
        ablation.main(ablation.AblationConfig(data=Path("."), output_dir=Path("o"), candidates=["width-128+nope"]))


@pytest.mark.slow  # one lrm-tiny trainer set-up and two small evaluations
def test_eval_data_scores_the_other_datasets_test_objects(procedural_dataset, tmp_path):
    """--eval-data: the held-out scores come from the other dataset's test split (here 3 views per object, where
    the training data's test object has 7), the training-object scores from the training data."""
    from lrm_nerfstudio.generate.generate import GenerateConfig
    from lrm_nerfstudio.generate.generate import main as generate

    other = tmp_path / "other"
    generate(GenerateConfig(output=other, num_objects=4, num_views=4, resolution=64, seed=3, workers=1))
    ablation = load_script("demo_ablation", "experiments")
    config = ablation.AblationConfig(
        data=procedural_dataset, eval_data=other, output_dir=tmp_path / "o", candidates=["baseline"], steps=1,
        eval_max_objects=1,
    )  # fmt: skip
    (row,) = ablation.main(config)
    assert row["num_views"] == 3 and row["eval_data"] == str(other) and row["data"] == str(procedural_dataset)
    assert math.isfinite(row["psnr"]) and math.isfinite(row["train_psnr"])
