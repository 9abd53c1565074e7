"""`lrm-demo`: the whole of LRM on a laptop CPU, end to end, in about a quarter of an hour.

1. Generate a small procedural dataset (resumes: finished objects are kept).
2. Train the `lrm-demo` method on it, with nerfstudio's viewer live at http://127.0.0.1:7007, bounded by iterations and minutes.
3. Evaluate on the held-out test objects (PSNR / SSIM / LPIPS from each object's source view alone).
4. Reconstruct one held-out object: mesh (GLB/OBJ/PLY), turntable, triplane and a config.yml for ns-viewer/ns-export
   (the code of `lrm-reconstruct`).
5. Print where everything is (also in OUTPUT_DIR/demo_summary.json).

Re-running reuses the dataset and the finished training run (`--retrain` trains again).

Example:
    uv run lrm-demo
    uv run lrm-demo --num-objects 6 --num-views 6 --resolution 32 --max-iterations 3 --no-viewer   # a smoke test
"""

from __future__ import annotations

import json
import sys
import time
from copy import deepcopy
from dataclasses import dataclass, field
from pathlib import Path

import torch
import tyro
from nerfstudio.engine.callbacks import TrainingCallback, TrainingCallbackLocation
from nerfstudio.engine.trainer import TrainerConfig
from nerfstudio.utils.rich_utils import CONSOLE
from rich.table import Table

from lrm_nerfstudio.generate.shapes import ShapeConfig
from lrm_nerfstudio.generate.textures import TextureConfig
from lrm_nerfstudio.io.checkpoints import find_checkpoint, read_trainer_config
from lrm_nerfstudio.lrm_config import DEMO_STEPS, lrm_demo_method
from lrm_nerfstudio.mesh.cleanup import check_cleanup_options
from lrm_nerfstudio.mesh.texture import check_texture_resolution
from lrm_nerfstudio.reconstruction import LoadedModel, OutputOptions, display_config, reconstruct_source

STATE_FILE = "demo_state.json"
"""Written in the output folder once training has finished: the run's config.yml (for resuming)."""


class DemoDataError(ValueError):
    """The demo's data folder cannot be used with the demo's settings."""


@dataclass
class DemoConfig:
    """Generate data, train the `lrm-demo` method with the viewer, evaluate on held-out objects, export a mesh and a
    turntable. The recipe (sizes, batch, rays) is the registered method's: `ns-train lrm-demo --help` lists it."""

    data: Path = Path("data/lrm-demo")
    """Procedural dataset folder (generated when missing, completed when partial)."""
    output_dir: Path = Path("outputs/demo")
    """Folder of the training run, metrics and reconstruction."""
    num_objects: int = 4096
    """Objects in the generated dataset (about 5% each go to val and test). Many objects with few views each beat
    256 x 16 views at the same steps: a single image leaves a primitive's depth extent ambiguous, and more distinct
    objects teach the prior that resolves it (experiments/TRAINING.md, fifth round)."""
    num_views: int = 6
    """Views per object (view 0 the canonical source, the others targets)."""
    resolution: int = 64
    """Image side of the generated views (also the evaluation resolution)."""
    max_iterations: int = DEMO_STEPS
    """Training iterations (about 0.5 s each on 2 CPU cores); the learning rate decays over them."""
    max_minutes: float | None = 10.0
    """Stop training after this many minutes even before max_iterations (None: no time bound)."""
    viewer: bool = True
    """Run nerfstudio's viewer during training (http://127.0.0.1:PORT)."""
    port: int = 7007
    """Viewer port."""
    retrain: bool = False
    """Train again even if OUTPUT_DIR holds a finished run."""
    eval_max_objects: int | None = 64
    """Evaluate on at most this many test objects, all their views but the source (None: all)."""
    mesh_resolution: int = 128
    """Marching-cubes resolution of the exported mesh."""
    texture_resolution: int = 1024
    """Side of the exported mesh's baked texture (0: vertex colours only)."""
    target_faces: int | None = None
    """Face budget of the exported mesh (None: 50 000 when baking a texture)."""
    turntable_frames: int = 24
    """Frames of the turntable."""
    turntable_resolution: int = 96
    """Side of the turntable frames in pixels."""
    workers: int = 2
    """Worker processes for data generation and loading."""
    seed: int = 0
    """Dataset seed."""
    shapes: ShapeConfig = field(
        default_factory=lambda: ShapeConfig(
            max_primitives=1, boolean_prob=0.0, wireframe_prob=0.0, height_field_prob=0.0
        )
    )
    """Objects of the demo data: one primitive (box, sphere, cylinder, cone, torus or capsule, randomly scaled and
    rotated) without the Zeroverse augmentations, so that ten CPU minutes teach shape, pose and colour rather than
    only extent. `lrm-generate` defaults to the full mix of 1-9 primitives."""
    textures: TextureConfig = field(default_factory=lambda: TextureConfig(kinds=("solid",)))
    """Textures of the demo data: one plain colour per object."""


def generate_dataset(config: DemoConfig) -> Path:
    """Generate (or complete) the demo dataset; a finished one made with the same settings is left as it is.

    Raises:
        DemoDataError: `config.data` holds objects made with other generator settings.
    """
    from lrm_nerfstudio.generate.generate import GenerateConfig, config_stamp
    from lrm_nerfstudio.generate.generate import main as generate

    gen = GenerateConfig(
        output=config.data,
        num_objects=config.num_objects,
        num_views=config.num_views,
        resolution=config.resolution,
        seed=config.seed,
        workers=config.workers,
        shapes=config.shapes,
        textures=config.textures,
    )
    if _complete(config.data, config.num_objects, config_stamp(gen)):
        CONSOLE.print(f"Reusing the dataset in {config.data}")
        return config.data
    CONSOLE.print(f"Generating {config.num_objects} objects x {config.num_views} views into {config.data}")
    try:
        generate(gen)
    except ValueError as err:
        raise DemoDataError(f"{err} (lrm-demo: pass another --data, or the settings that made it)") from err
    return config.data


def _complete(data: Path, num_objects: int, stamp: str) -> bool:
    """Whether `data` holds exactly `num_objects` objects, all made with generator settings `stamp`."""
    try:
        record = json.loads((data / "dataset.json").read_text())
        splits, made_with = record["splits"], record["generator"]["stamp"]
    except (OSError, ValueError, KeyError, TypeError):
        return False
    return made_with == stamp and sum(len(ids) for ids in splits.values()) == num_objects


def trainer_config(config: DemoConfig) -> TrainerConfig:
    """The registered `lrm-demo` method, unchanged but for where and how long it runs: the data and output folders,
    the iteration budget (the learning-rate schedule is fitted to it), the viewer's port (closing when training
    ends) and patches no larger than the data's views. With the defaults, `ns-train lrm-demo --data data/lrm-demo`
    trains the same model."""
    trainer = deepcopy(lrm_demo_method.config)
    trainer.output_dir = config.output_dir / "runs"
    trainer.experiment_name = "demo"
    trainer.max_num_iterations = config.max_iterations
    trainer.steps_per_save = max(1, min(trainer.steps_per_save, config.max_iterations))
    trainer.vis = "viewer+tensorboard" if config.viewer else "tensorboard"
    trainer.viewer.websocket_port = config.port
    trainer.viewer.quit_on_train_completion = True  # else nerfstudio waits for the viewer forever after training
    dm = trainer.pipeline.datamanager
    dm.data = config.data
    dm.num_workers = config.workers
    dm.eval_resolution = config.resolution
    lo, hi = dm.render_resolution_range
    dm.patch_size = min(dm.patch_size, config.resolution)
    dm.render_resolution_range = (
        max(dm.patch_size, min(lo, config.resolution)),
        max(dm.patch_size, min(hi, 2 * config.resolution)),
    )
    for group in trainer.optimizers.values():
        scheduler = group["scheduler"]
        scheduler.max_steps = config.max_iterations
        scheduler.warm_up_end = min(scheduler.warm_up_end, max(1, config.max_iterations // 10))
    return trainer


def train(config: DemoConfig) -> tuple[Path, object]:
    """Train in this process (so that a time bound can stop it cleanly); returns (config.yml, pipeline)."""
    trainer_cfg = trainer_config(config)
    trainer_cfg.set_timestamp()
    trainer_cfg.save_config()
    config_path = trainer_cfg.get_base_dir() / "config.yml"
    if config.viewer:
        CONSOLE.print(f"[bold]Viewer: http://127.0.0.1:{config.port}[/bold] (live while training)")
    trainer = trainer_cfg.setup(local_rank=0, world_size=1)
    trainer.setup()
    start = time.perf_counter()

    def stop_when_out_of_time(step: int) -> None:
        if config.max_minutes is not None and time.perf_counter() - start > 60.0 * config.max_minutes:
            if not trainer.stop_training:
                CONSOLE.print(f"Training stopped by --max-minutes {config.max_minutes:g} after step {step}")
            trainer.stop_training = True

    trainer.callbacks.append(
        TrainingCallback([TrainingCallbackLocation.AFTER_TRAIN_ITERATION], stop_when_out_of_time, kwargs={})
    )
    try:
        trainer.train()
    finally:
        trainer.shutdown()  # stops the viewer's server so that the demo can exit
    return config_path, trainer.pipeline


def run(config: DemoConfig) -> dict[str, str]:
    """The demo; returns the artefacts (name -> path or URL)."""
    torch.set_num_threads(max(1, torch.get_num_threads()))
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    data = generate_dataset(config)
    timings["generate_s"] = time.perf_counter() - t0
    config.output_dir.mkdir(parents=True, exist_ok=True)
    state_path = config.output_dir / STATE_FILE

    t0 = time.perf_counter()
    pipeline = None
    config_path: Path | None = None
    if state_path.is_file() and not config.retrain:
        config_path = Path(json.loads(state_path.read_text())["config"])
        if config_path.is_file():
            CONSOLE.print(f"Reusing the finished training run {config_path} (--retrain to train again)")
        else:
            config_path = None
    if config_path is None:
        config_path, pipeline = train(config)
        state_path.write_text(json.dumps({"config": str(config_path)}))
    timings["train_s"] = time.perf_counter() - t0

    trainer_cfg = read_trainer_config(config_path)
    checkpoint = find_checkpoint(trainer_cfg, config_path)
    if pipeline is None:
        from nerfstudio.utils.eval_utils import eval_setup

        _, pipeline, _, _ = eval_setup(config_path, test_mode="test")
    pipeline.eval()
    step = int(checkpoint.stem.split("-")[-1])

    t0 = time.perf_counter()
    metrics = pipeline.get_average_eval_image_metrics(step=step, output_path=config.output_dir / "eval_images")
    metrics_path = config.output_dir / "metrics.json"
    metrics_path.write_text(json.dumps({"step": step, "split": "test", "metrics": metrics}, indent=2))
    timings["eval_s"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    object_id = pipeline.datamanager.list_objects()["test"][0]
    image, camera, name = pipeline.datamanager.get_display_source(object_id)
    loaded = LoadedModel(trainer_cfg, pipeline.model, step, checkpoint, config_path)
    out_dir = config.output_dir / "reconstruction" / object_id
    options = OutputOptions(
        resolution=config.mesh_resolution,
        texture_resolution=config.texture_resolution,
        target_faces=config.target_faces,
        turntable_frames=config.turntable_frames,
        turntable_resolution=config.turntable_resolution,
    )
    rec_config = display_config(loaded, checkpoint, data, object_id, out_dir)
    rec = reconstruct_source(loaded, image, camera, name, out_dir, options, config=rec_config)
    timings["export_s"] = time.perf_counter() - t0

    artefacts = {
        "dataset": str(data),
        "training config": str(config_path),
        "checkpoint": str(checkpoint),
        "tensorboard logs": str(config_path.parent),
        "metrics": str(metrics_path),
        "eval images": str(config.output_dir / "eval_images"),
        **{f"held-out {key.replace('_', ' ')}": str(path) for key, path in rec.files.items()},
    }
    summary = {
        "artefacts": artefacts,
        "metrics": metrics,
        "timings_s": timings,
        "reconstruction_timings_s": rec.timings,
        "commands": {
            "viewer (training run)": f"ns-viewer --load-config {config_path}",
            "viewer (held-out object)": f"ns-viewer --load-config {rec.files['config']}",
            "mesh export": f"ns-export poisson --load-config {rec.files['config']} --output-dir {out_dir / 'poisson'}",
        },
    }
    (config.output_dir / "demo_summary.json").write_text(json.dumps(summary, indent=2))
    artefacts["summary"] = str(config.output_dir / "demo_summary.json")
    _print_summary(artefacts, metrics, timings, summary["commands"])
    return artefacts


def _print_summary(artefacts: dict[str, str], metrics: dict[str, float], timings, commands) -> None:
    table = Table(title="lrm-demo: where everything is")
    table.add_column("artefact")
    table.add_column("path", overflow="fold")
    for key, value in artefacts.items():
        table.add_row(key, value)
    CONSOLE.print(table)
    scores = (
        f"PSNR {metrics['psnr']:.2f} dB (background only {metrics['background_psnr']:.2f}), SSIM {metrics['ssim']:.3f}"
    )
    if "lpips" in metrics:
        scores += f", LPIPS {metrics['lpips']:.3f}"
    if "mask_iou" in metrics:
        scores += f", mask IoU {metrics['mask_iou']:.3f}"
    CONSOLE.print(f"Held-out test objects: {scores}", highlight=False)
    CONSOLE.print("Seconds: " + ", ".join(f"{k[:-2]} {v:.0f}" for k, v in timings.items()), highlight=False)
    for what, command in commands.items():
        CONSOLE.print(f"{what}: {command}", soft_wrap=True, highlight=False)


def main(config: DemoConfig) -> int:
    """Run the demo; returns the exit code."""
    problem = check_texture_resolution(config.texture_resolution) or check_cleanup_options(config.target_faces, 0.0)
    if problem is not None:  # before hours of training, not after
        CONSOLE.print(f"[bold red]lrm-demo: {problem}", soft_wrap=True, highlight=False)
        return 2
    start = time.perf_counter()
    try:
        run(config)
    except DemoDataError as err:  # data made with other settings: one clear line, not a traceback
        CONSOLE.print(f"[bold red]lrm-demo: {err}")
        return 2
    CONSOLE.print(f"lrm-demo finished in {(time.perf_counter() - start) / 60:.1f} min")
    return 0


def entrypoint() -> None:
    """`lrm-demo` console script."""
    sys.exit(main(tyro.cli(DemoConfig)))


if __name__ == "__main__":
    entrypoint()
