"""Progressive resolution: patch size, render resolution and samples per ray follow `pipeline.progressive`."""

import pytest
import torch
from conftest import tiny_trainer_config

from lrm_nerfstudio.training.progressive import ProgressiveStage, parse_schedule, stage_at

# base (tiny_trainer_config): patch 16, render resolution 32..64, 12 + 12 samples
SCHEDULE = (
    (2, 16, 16, 16, 6, 4),  # whole 16-px views: 16x16 patches, coarse pixels
    (4, 16, 48, 48, 8, 6),  # 16x16 crops of 48-px views: pixels 3x finer, 9x smaller in area
    (6, 8, 8, 24, 5, 3),  # 8x8 patches
)


def test_stage_at_is_a_function_of_the_step():
    stages = parse_schedule(SCHEDULE)
    assert stage_at(stages, 0) is None and stage_at(stages, 1) is None
    assert stage_at(stages, 2) == stage_at(stages, 3) == ProgressiveStage(*SCHEDULE[0])
    assert stage_at(stages, 5).render_resolution_range == (48, 48)
    assert stage_at(stages, 10**9) == ProgressiveStage(*SCHEDULE[2])


@pytest.mark.parametrize(
    "bad",
    [((0, 16, 32, 64, 12),), ((0, 32, 16, 64, 12, 12),), ((0, 16, 32, 16, 12, 12),), ((0, 16, 32, 64, 0, 12),),
     ((5, 16, 32, 64, 12, 12), (5, 8, 8, 8, 4, 4))],
)  # fmt: skip
def test_bad_schedules_are_refused(bad, procedural_dataset):
    config = tiny_trainer_config(procedural_dataset)
    config.pipeline.progressive = bad
    with pytest.raises(ValueError, match="pipeline.progressive"):
        config.pipeline.setup(device="cpu", test_mode="val")


def test_schedule_changes_rays_and_samples_at_its_steps(procedural_dataset):
    torch.manual_seed(0)
    config = tiny_trainer_config(procedural_dataset)
    config.pipeline.progressive = SCHEDULE
    pipeline = config.pipeline.setup(device="cpu", test_mode="val")
    bundles = {}
    next_train = pipeline.datamanager.next_train

    def recording_next_train(step):  # records what the pipeline's own call returned
        ray_bundle, batch = next_train(step)
        bundles[step] = ray_bundle
        return ray_bundle, batch

    pipeline.datamanager.next_train = recording_next_train
    views = 2 * 2  # objects x target views
    expected = {1: (16, 12, 12), 2: (16, 6, 4), 3: (16, 6, 4), 4: (16, 8, 6), 5: (16, 8, 6), 6: (8, 5, 3)}
    pixel_area = {}
    with torch.no_grad():
        for step, (patch, coarse, fine) in expected.items():
            outputs, _, _ = pipeline.get_train_loss_dict(step)
            uniform, pdf = outputs["ray_samples_list"]
            n = views * patch * patch
            assert len(bundles[step]) == n and outputs["rgb"].shape == (n, 3), step
            assert pipeline.datamanager.get_train_rays_per_batch() == n
            assert uniform.shape == (n, coarse), step
            assert pdf.shape == (n, coarse + fine + 1), step  # the PDF sampler keeps the coarse samples' bins
            pixel_area[step] = float(bundles[step].pixel_area.median())
    # render resolution: 16-px views vs 48-px views, same patch size -> pixel footprint about 9x smaller in area
    assert 6.0 < pixel_area[3] / pixel_area[4] < 12.0, pixel_area
    # back to the base settings when asked for an earlier step (a function of the step, not of history)
    pipeline.apply_progressive_stage(0)
    assert pipeline.datamanager.config.patch_size == 16
    assert pipeline.datamanager.config.render_resolution_range == (32, 64)
    assert pipeline.model.sampler_uniform.num_samples == 12 and pipeline.model.sampler_pdf.num_samples == 12


def test_lrm_schedule_is_coarse_to_fine():
    from lrm_nerfstudio.lrm_config import lrm_method, lrm_tiny_method

    stages = parse_schedule(lrm_method.config.pipeline.progressive)
    assert [s.min_render_res for s in stages] == [64, 128, 256]
    assert [s.patch_size for s in stages] == sorted(s.patch_size for s in stages)
    assert lrm_tiny_method.config.pipeline.progressive == ()
