"""Fine-tuning an imported model with nerfstudio's trainer: `lrm-triposr` + `--pipeline.model.init-from FILE`."""

from __future__ import annotations

from copy import deepcopy
from dataclasses import replace
from pathlib import Path

import torch

from lrm_nerfstudio.convert.load import import_folder
from lrm_nerfstudio.io.state_keys import stable_state
from lrm_nerfstudio.io.weights import WeightsSource
from lrm_nerfstudio.pretrained import Pretrained, from_pretrained, save_pretrained
from lrm_nerfstudio.scripts.export_weights import ExportWeightsConfig
from lrm_nerfstudio.scripts.export_weights import main as export_weights

FIXTURES = Path(__file__).parents[1] / "fixtures" / "reference"


def _batch_loss(pipeline, ray_bundle, batch) -> float:
    model = pipeline.model
    with torch.no_grad():
        outputs = model(ray_bundle, batch["source_images"], batch["source_cameras"])
        losses = model.get_loss_dict(outputs, batch, model.get_metrics_dict(outputs, batch))
    return float(sum(losses.values()))


def test_finetune_imported_triposr_loss_falls_and_reloads(procedural_dataset, tmp_path):
    from lrm_nerfstudio.lrm_config import lrm_triposr_method

    init = tmp_path / "triposr.safetensors"
    imported, imported_state = import_folder(FIXTURES / "triposr_small", "triposr")
    source = WeightsSource("triposr", 0, None)
    save_pretrained(init, Pretrained(imported.model, imported.method, source, imported_state))

    config = deepcopy(lrm_triposr_method.config)
    dm = config.pipeline.datamanager
    dm.data, dm.num_workers, dm.objects_per_batch, dm.target_views_per_object = procedural_dataset, 0, 2, 2
    dm.patch_size, dm.render_resolution_range, dm.eval_resolution = 16, (32, 48), 32
    model = replace(config.pipeline.model, init_from=init, use_lpips=False)
    config.pipeline = replace(config.pipeline, model=model)  # re-runs __post_init__: the file's architecture
    processor = config.pipeline.model.processor
    assert config.pipeline.model.transformer.inner_dim == 64 and processor.resolution == 64  # (fixture sizes)
    assert processor.background == (0.5, 0.5, 0.5)  # TripoSR's input preset
    steps = 12
    config.max_num_iterations, config.steps_per_save, config.save_only_latest_checkpoint = steps, steps, True
    config.steps_per_eval_batch = config.steps_per_eval_image = config.steps_per_eval_all_images = 10**6
    config.vis, config.output_dir, config.experiment_name = "tensorboard", tmp_path / "outputs", "ft"
    for group in config.optimizers.values():
        group["optimizer"].lr = 3e-3
        group["scheduler"].warm_up_end = 0
    config.set_timestamp()
    config.save_config()

    trainer = config.setup(local_rank=0, world_size=1)
    trainer.setup()
    pipeline = trainer.pipeline
    started = stable_state(pipeline.model.state_dict())
    for key, value in imported_state.items():  # the run starts from the imported weights
        assert torch.equal(started[key], value), key
    ray_bundle, batch = pipeline.datamanager.next_train(0)
    before = _batch_loss(pipeline, ray_bundle, batch)
    trainer.train()
    after = _batch_loss(pipeline, ray_bundle, batch)
    print(f"fixed-batch loss before {before:.4f}, after {steps} steps {after:.4f}")
    assert after < 0.8 * before, (before, after)

    # the checkpoint reloads: exported through its config.yml, then from_pretrained gives the trained model
    config_path = config.get_base_dir() / "config.yml"
    weights = tmp_path / "finetuned.safetensors"
    assert export_weights(ExportWeightsConfig(load_config=config_path, output=weights)) == 0
    reloaded = from_pretrained(weights, device="cpu")
    images, cameras = batch["source_images"][:1], batch["source_cameras"][:1]
    with torch.no_grad():
        torch.testing.assert_close(
            reloaded.predict_triplanes(images, cameras), pipeline.model.predict_triplanes(images, cameras)
        )
