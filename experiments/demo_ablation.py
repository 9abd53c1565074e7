"""Ablation of `lrm-demo`'s training recipe at a fixed step count; prints JSON and writes a Markdown table.

Each named candidate is the demo's trainer (`lrm_nerfstudio.scripts.demo.trainer_config`, learning-rate schedule
over the demo's 1200 iterations) with a few settings changed, trained from the same seed on the same data for
`--steps` steps (the demo itself is stopped by its time bound long before the schedule ends), then evaluated on
the same held-out test objects: PSNR / SSIM against the background-only PSNR, and the mask IoU of the rendered
accumulation (> 0.5) against the ground-truth alpha (> 0.5). `init_accumulation` is the mean accumulation of the
first held-out view rendered by the untrained model over the pixels whose rays cross the box: how much fog
training starts from.

    uv run python experiments/demo_ablation.py --data data/lrm-demo --steps 400 --candidates baseline bias-4

Results are appended to OUTPUT_DIR/results.jsonl (one line per run, so runs in parallel processes can share a
folder) and the whole table is rewritten to OUTPUT_DIR/results.md after each run.
"""

from __future__ import annotations

import json
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
import tyro
from nerfstudio.engine.trainer import TrainerConfig

from lrm_nerfstudio.eval.image_metrics import mask_iou
from lrm_nerfstudio.scripts.demo import DemoConfig, trainer_config


def _set(path: str, value) -> Callable[[TrainerConfig], None]:
    """A candidate edit: set the dotted attribute `path` of the trainer config to `value`."""

    def edit(trainer: TrainerConfig) -> None:
        *parents, name = path.split(".")
        obj = trainer
        for part in parents:
            obj = getattr(obj, part)
        if not hasattr(obj, name):  # a misspelt setting would otherwise become a new, unread attribute
            raise AttributeError(f"demo_ablation: the trainer config has no setting {path!r}")
        setattr(obj, name, value)

    return edit


def _lr(group: str, lr: float) -> Callable[[TrainerConfig], None]:
    def edit(trainer: TrainerConfig) -> None:
        trainer.optimizers[group]["optimizer"].lr = lr

    return edit


MODEL = "pipeline.model"
DM = "pipeline.datamanager"
CANDIDATES: dict[str, list[Callable[[TrainerConfig], None]]] = {
    "baseline": [],
    "bias-1": [_set(f"{MODEL}.field.density_bias", -1.0)],
    "bias-4": [_set(f"{MODEL}.field.density_bias", -4.0)],
    "bias-6": [_set(f"{MODEL}.field.density_bias", -6.0)],
    "softplus-bias-4": [
        _set(f"{MODEL}.field.density_activation", "softplus"),
        _set(f"{MODEL}.field.density_bias", -4.0),
    ],
    "mask-2": [_set(f"{MODEL}.mask_loss_mult", 2.0)],
    "bias-4-mask-2": [_set(f"{MODEL}.field.density_bias", -4.0), _set(f"{MODEL}.mask_loss_mult", 2.0)],
    "samples-24-8": [_set(f"{MODEL}.num_coarse_samples", 24), _set(f"{MODEL}.num_importance_samples", 8)],
    "bias-4-samples-24-8": [
        _set(f"{MODEL}.field.density_bias", -4.0),
        _set(f"{MODEL}.num_coarse_samples", 24),
        _set(f"{MODEL}.num_importance_samples", 8),
    ],
    "bias-4-lr-2x": [_set(f"{MODEL}.field.density_bias", -4.0), _lr("decoder", 2e-3), _lr("encoder", 6e-4)],
    # batch shape at the same rays per step (4096): more objects, fewer views of each
    "objects-8-views-2": [_set(f"{DM}.objects_per_batch", 8), _set(f"{DM}.target_views_per_object", 2)],
    "objects-16-views-1": [_set(f"{DM}.objects_per_batch", 16), _set(f"{DM}.target_views_per_object", 1)],
    "objects-2-views-8": [_set(f"{DM}.objects_per_batch", 2), _set(f"{DM}.target_views_per_object", 8)],
    # sharper targets: patches from larger renders (the demo: 16^2 patches of 16-24^2 renders)
    "render-32-48": [_set(f"{DM}.render_resolution_range", (32, 48))],
    "planes-16": [_set(f"{MODEL}.transformer.triplane_low_res", 16)],
    # triplane resolution without more tokens: each 8^2 token becomes a 4x4 block of texels
    "upsample-4": [_set(f"{MODEL}.upsampler.scale", 4)],
    # cheaper steps: fewer field evaluations per ray, or fewer rays
    "midpoint-24": [_set(f"{MODEL}.sampler", "midpoint"), _set(f"{MODEL}.num_coarse_samples", 24)],
    "views-2": [_set(f"{DM}.target_views_per_object", 2)],
    # a cheaper decoder: the transformer runs once per object and takes most of a step
    "width-128": [_set(f"{MODEL}.transformer.inner_dim", 128)],
    "layers-2": [_set(f"{MODEL}.transformer.num_layers", 2)],
    "width-128-objects-8-views-2": [
        _set(f"{MODEL}.transformer.inner_dim", 128),
        _set(f"{DM}.objects_per_batch", 8),
        _set(f"{DM}.target_views_per_object", 2),
    ],
    # geometry from the data's depth maps: a dense per-pixel signal where plain colours give almost none
    "depth-1": [_set(f"{DM}.load_depth", True), _set(f"{MODEL}.depth_loss_mult", 1.0)],
    "depth-0.25": [_set(f"{DM}.load_depth", True), _set(f"{MODEL}.depth_loss_mult", 0.25)],
    # the image lifted along the source camera's rays with a learnt occupancy per depth slice
    "lift-volume": [_set(f"{MODEL}.transformer.lift_volume", True)],
    # the source image lifted into the field's triplane at pixel precision, beside the decoder's planes
    "pixel-lift": [_set(f"{MODEL}.pixel_lift.enabled", True)],
    "pixel-lift-width-128-objects-16-views-1": [
        _set(f"{MODEL}.pixel_lift.enabled", True),
        _set(f"{MODEL}.transformer.inner_dim", 128),
        _set(f"{DM}.objects_per_batch", 16),
        _set(f"{DM}.target_views_per_object", 1),
    ],
    # four times the objects a step at the same rays, the transformer narrowed to pay for them
    "objects-32-views-1": [_set(f"{DM}.objects_per_batch", 32), _set(f"{DM}.target_views_per_object", 1)],
    "width-128-objects-16-views-1": [
        _set(f"{MODEL}.transformer.inner_dim", 128),
        _set(f"{DM}.objects_per_batch", 16),
        _set(f"{DM}.target_views_per_object", 1),
    ],
    "lift-volume-objects-16-views-1": [
        _set(f"{MODEL}.transformer.lift_volume", True),
        _set(f"{DM}.objects_per_batch", 16),
        _set(f"{DM}.target_views_per_object", 1),
    ],
    # the recipe the demo had before the fifth round, for rerunning that round's rows against today's defaults
    "recipe-round-4": [
        _set(f"{MODEL}.transformer.inner_dim", 256),
        _set(f"{DM}.objects_per_batch", 4),
        _set(f"{DM}.target_views_per_object", 4),
        _set(f"{DM}.patch_sampling", "resize"),
    ],
    # the source view supervised as one of the four target views (4 objects x 4 views: source_as_target needs >= 2)
    "source-target": [
        _set(f"{DM}.objects_per_batch", 4),
        _set(f"{DM}.target_views_per_object", 4),
        _set(f"{DM}.source_as_target", True),
    ],
    "layers-0": [_set(f"{MODEL}.transformer.num_layers", 0)],
    "layers-1": [_set(f"{MODEL}.transformer.num_layers", 1)],
    # capacity and sharpness probes (for GPU learning curves; too slow a step for the demo's CPU budget)
    "big": [
        _set(f"{MODEL}.transformer.triplane_low_res", 16),
        _set(f"{MODEL}.transformer.num_layers", 6),
        _set(f"{MODEL}.field.hidden_dim", 128),
    ],
    "sharp": [_set(f"{DM}.patch_size", 32), _set(f"{DM}.render_resolution_range", (32, 64))],
    # the same 16^2 rays a view, as every 4th pixel of the 64^2 view itself: the whole object, at full sharpness
    "stride": [_set(f"{DM}.patch_sampling", "stride")],
    "patch-12": [_set(f"{DM}.patch_size", 12)],
    "lr-2x": [_lr("decoder", 2e-3), _lr("encoder", 6e-4)],
    "relu": [_set(f"{MODEL}.field.activation", "relu")],
    "objects-64-views-1": [_set(f"{DM}.objects_per_batch", 64), _set(f"{DM}.target_views_per_object", 1)],
    "patch-8": [_set(f"{DM}.patch_size", 8)],
    "lr-3x": [_lr("decoder", 3e-3), _lr("encoder", 9e-4)],
}
"""Named candidates: edits applied to the demo's trainer config."""

DESCRIPTIONS = {
    "baseline": "the demo's current recipe (width-128 transformer, 16 objects x 1 view x 16^2 strided rays, bias -4)",
    "bias-1": "density bias -1, lrm-tiny's default before the first round (initial density exp(-1) = 0.37)",
    "bias-4": "density bias -4 (initial density exp(-4) = 0.018)",
    "bias-6": "density bias -6 (initial density exp(-6) = 0.0025)",
    "softplus-bias-4": "softplus density, bias -4",
    "mask-2": "mask loss weight 2 (demo: 0.5)",
    "bias-4-mask-2": "density bias -4 and mask loss weight 2",
    "samples-24-8": "24 uniform + 8 importance samples (demo: 16 + 16)",
    "bias-4-samples-24-8": "density bias -4, 24 + 8 samples",
    "bias-4-lr-2x": "density bias -4, learning rates x2 (decoder 2e-3, encoder 6e-4)",
    "objects-8-views-2": "8 objects x 2 views a step (round-4 demo: 4 x 4; same rays)",
    "objects-16-views-1": "16 objects x 1 view a step (round-4 demo: 4 x 4; same rays)",
    "objects-2-views-8": "2 objects x 8 views a step (round-4 demo: 4 x 4; same rays)",
    "render-32-48": "16^2 patches from 32-48^2 renders (round-4 demo: 16-24^2)",
    "planes-16": "16^2 token planes, 32^2 triplane (demo: 8^2, 16^2)",
    "upsample-4": "8^2 token planes upsampled x4 to a 32^2 triplane (demo: x2, 16^2)",
    "midpoint-24": "24 midpoint samples per ray, all with gradients (demo: 16 uniform + 16 importance)",
    "views-2": "2 target views an object a step (round-4 demo: 4 objects x 4 views; with it, half the rays)",
    "width-128": "triplane transformer width 128 (round-4 demo: 256)",
    "layers-2": "2 triplane transformer layers (demo: 3)",
    "width-128-objects-8-views-2": "transformer width 128, 8 objects x 2 views a step",
    "depth-1": "L1 loss on the expected z-depth of foreground rays, weight 1 (demo: no depth)",
    "depth-0.25": "L1 loss on the expected z-depth of foreground rays, weight 0.25 (demo: no depth)",
    "pixel-lift": "pixel lift: source pixels and patch features lifted along the camera's rays into the triplane",
    "pixel-lift-width-128-objects-16-views-1": "pixel lift, transformer width 128, 16 objects x 1 view a step",
    "objects-32-views-1": "32 objects x 1 view a step (round-4 demo: 4 x 4; twice the rays)",
    "width-128-objects-16-views-1": "transformer width 128, 16 objects x 1 view a step (round-4 demo: 256, 4 x 4)",
    "lift-volume-objects-16-views-1": "volume lift, 16 objects x 1 view a step",
    "lift-volume": "image lifted along the canonical camera's rays, occupancy per depth slice (demo: orthographic)",
    "source-target": "4 objects x 4 views a step, the source view one of the 4 (otherwise only other views)",
    "layers-1": "1 triplane transformer layer (demo: 3)",
    "layers-0": "no triplane transformer layers: the lifted image and the position tokens go straight to the upsampler",
    "big": "16^2 token planes (32^2 triplane), 6 transformer layers, field MLP width 128",
    "sharp": "32^2 patches of 32-64^2 renders (round-4 demo: 16^2 of 16-24^2)",
    "stride": "16^2 rays a view on every 4th pixel of the 64^2 view (random offset), not a 16-24^2 resize (demo since round 5)",
    "patch-12": "12^2 rays a view (demo: 16^2)",
    "lr-2x": "learning rates x2 (decoder 2e-3, encoder 6e-4)",
    "objects-64-views-1": "64 objects x 1 view a step (demo: 16 x 1)",
    "patch-8": "8^2 rays a view, every 8th pixel (demo: 16^2)",
    "lr-3x": "learning rates x3 (decoder 3e-3, encoder 9e-4)",
    "relu": "ReLU in the field's MLP (demo: SiLU)",
    "recipe-round-4": "the demo before round 5: width 256, 4 objects x 4 views, 16^2 patches resized from 16-24^2",
}


@dataclass
class AblationConfig:
    """Train named candidates of the demo's recipe for a fixed number of steps and evaluate them on held-out objects."""

    data: Path = Path("data/lrm-demo")
    """Dataset made by `lrm-demo`'s defaults (`uv run lrm-demo` generates it)."""
    output_dir: Path = Path("outputs/demo-ablation")
    """Folder of the runs and of results.jsonl / results.md."""
    candidates: list[str] = field(default_factory=lambda: ["baseline", "bias-4"])
    """Candidates to run, in order (see CANDIDATES in this file); "a+b" combines candidates a and b."""
    steps: int = 400
    """Training steps of each run."""
    schedule_steps: int = 1200
    """Length of the learning-rate schedule (the demo's max_iterations)."""
    eval_max_objects: int | None = None
    """Held-out test objects to evaluate (None: all)."""
    eval_data: Path | None = None
    """Score the test objects of this dataset instead of --data's own (e.g. the demo's 13 test objects while
    training on a larger dataset from another seed, so that rows trained on different data compare on the same
    objects). None: --data's test split."""
    workers: int = 1
    """Data-loading worker processes."""
    seed: int = 0
    """Seed of torch / numpy / random before the model is built."""


def known(name: str) -> bool:
    """Whether `name` is a candidate or a '+'-joined combination of candidates."""
    return all(part in CANDIDATES for part in name.split("+"))


def edits(name: str) -> list[Callable[[TrainerConfig], None]]:
    """The edits of candidate `name`; 'a+b' applies a's, then b's."""
    return [edit for part in name.split("+") for edit in CANDIDATES[part]]


def _seed(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


@torch.no_grad()
def _init_accumulation(pipeline) -> float:
    """Mean accumulation over the box-crossing pixels of the first held-out view (the untrained model's fog)."""
    camera, batch = next(iter(pipeline.datamanager.iter_eval_views(split="test", max_objects=1)))
    pipeline.eval()
    outputs = pipeline.render_eval_view(camera, batch, compute_normals=False)
    pipeline.train()
    acc = outputs["accumulation"][..., 0]
    return float(acc[acc > 0].mean()) if bool((acc > 0).any()) else 0.0


@torch.no_grad()
def evaluate(pipeline, max_objects: int | None, split: str = "test", datamanager=None) -> dict[str, float]:
    """PSNR / SSIM / background PSNR / mask IoU averaged over the non-source views of `split`'s objects (of
    `datamanager`'s dataset, by default the pipeline's own)."""
    pipeline.eval()
    rows = []
    dm = datamanager if datamanager is not None else pipeline.datamanager
    for camera, batch in dm.iter_eval_views(split=split, max_objects=max_objects):
        outputs = pipeline.render_eval_view(camera, batch, compute_normals=False)
        image = batch["image"]
        row = pipeline.model.image_metrics(outputs["rgb"], image)
        background = batch["background_color"].view(3).to(image)
        row["background_psnr"] = float(-10.0 * torch.log10(torch.mean((image - background) ** 2).clamp(min=1e-10)))
        row["mask_iou"] = mask_iou(outputs["accumulation"], batch["alpha"].reshape(image.shape[:2] + (1,)))
        rows.append(row)
    pipeline.train()
    result = {key: float(np.mean([row[key] for row in rows])) for key in rows[0]}
    result["num_views"] = float(len(rows))
    return result


def run_candidate(config: AblationConfig, name: str) -> dict:
    """Train candidate `name` for `config.steps` steps and evaluate it."""
    if not known(name):
        raise ValueError(f"demo_ablation: unknown candidate {name!r}; known: {', '.join(CANDIDATES)}")
    demo = DemoConfig(
        data=config.data,
        output_dir=config.output_dir / name,
        max_iterations=config.schedule_steps,
        viewer=False,
        workers=config.workers,
    )
    trainer_cfg = trainer_config(demo)
    for edit in edits(name):
        edit(trainer_cfg)
    trainer_cfg.max_num_iterations = config.steps
    trainer_cfg.steps_per_eval_batch = trainer_cfg.steps_per_eval_image = 10**9  # evaluation only at the end
    trainer_cfg.steps_per_eval_all_images = 10**9
    trainer_cfg.steps_per_save = config.steps
    trainer_cfg.set_timestamp()
    trainer_cfg.save_config()  # the run's config.yml, for ns-viewer / lrm-reconstruct / lrm-eval afterwards
    _seed(config.seed)
    trainer = trainer_cfg.setup(local_rank=0, world_size=1)
    trainer.setup()
    init_acc = _init_accumulation(trainer.pipeline)
    start = time.perf_counter()
    try:
        trainer.train()
    finally:
        trainer.shutdown()
    train_s = time.perf_counter() - start
    held_out = None
    if config.eval_data is not None:
        dm_config = replace(trainer_cfg.pipeline.datamanager, data=config.eval_data)
        dm_config.dataparser = replace(dm_config.dataparser, data=config.eval_data)
        held_out = dm_config.setup(device=trainer.pipeline.device, test_mode="test")
    metrics = evaluate(trainer.pipeline, config.eval_max_objects, datamanager=held_out)
    # the same measures on as many training objects: a gap to the held-out ones is over-fitting, none is under-fitting
    num_test = len((held_out or trainer.pipeline.datamanager).dataparser.object_ids("test"))
    seen = evaluate(trainer.pipeline, config.eval_max_objects or num_test, split="train")
    return {
        "candidate": name,
        "settings": "; ".join(DESCRIPTIONS.get(part, part) for part in name.split("+")),
        "seed": config.seed,
        "steps": config.steps,
        "data": str(config.data),
        "eval_data": str(config.eval_data or config.data),
        "schedule_steps": config.schedule_steps,
        "train_s": round(train_s, 1),
        "s_per_step": round(train_s / config.steps, 3),
        "init_accumulation": round(init_acc, 4),
        **{k: round(v, 4) for k, v in metrics.items()},
        "psnr_over_background": round(metrics["psnr"] - metrics["background_psnr"], 3),
        "train_psnr": round(seen["psnr"], 4),
        "train_mask_iou": round(seen["mask_iou"], 4),
    }


def _cell(row: dict, key: str, fmt: str) -> str:
    """A table cell; rows written before the runner measured `key` show a dash."""
    return format(row[key], fmt) if key in row else "-"


def write_table(results: list[dict], path: Path) -> None:
    """Markdown table of all runs in `results`."""
    head = "| candidate | settings | seed | steps | train s | s/step | init acc | PSNR | bg PSNR | +dB | SSIM | mask IoU | train PSNR | train IoU |"
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in results:
        lines.append(
            f"| {r['candidate']} | {r['settings']} | {r.get('seed', 0)} | {r['steps']} | {r['train_s']:.0f} | {r['s_per_step']:.2f} | "
            f"{r['init_accumulation']:.3f} | {r['psnr']:.2f} | {r['background_psnr']:.2f} | "
            f"{r['psnr_over_background']:+.2f} | {r['ssim']:.3f} | {r['mask_iou']:.3f} | "
            f"{_cell(r, 'train_psnr', '.2f')} | {_cell(r, 'train_mask_iou', '.3f')} |"
        )
    path.write_text("\n".join(lines) + "\n")


def main(config: AblationConfig) -> list[dict]:
    """Run every candidate; returns their result rows (also printed as JSON)."""
    torch.set_num_threads(max(1, torch.get_num_threads()))
    unknown = [name for name in config.candidates if not known(name)]
    if unknown:
        raise ValueError(f"demo_ablation: unknown candidate(s) {unknown}; known: {', '.join(CANDIDATES)}")
    if not (config.data / "dataset.json").is_file():
        raise ValueError(f"{config.data / 'dataset.json'}: missing; generate the demo data with `uv run lrm-demo`")
    config.output_dir.mkdir(parents=True, exist_ok=True)
    jsonl = config.output_dir / "results.jsonl"
    rows = []
    for name in config.candidates:
        row = run_candidate(config, name)
        rows.append(row)
        with jsonl.open("a") as f:
            f.write(json.dumps(row) + "\n")
        everything = [json.loads(line) for line in jsonl.read_text().splitlines() if line.strip()]
        write_table(everything, config.output_dir / "results.md")
        print(json.dumps(row), flush=True)
    return rows


def entrypoint() -> None:
    """Command line."""
    main(tyro.cli(AblationConfig))


if __name__ == "__main__":
    entrypoint()
