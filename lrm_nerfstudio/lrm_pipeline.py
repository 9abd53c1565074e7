"""The LRM pipeline: condition on each step's source views, render their target rays, and evaluate held-out
objects from their source view alone (Hong et al. 2023, §3.3 and §4)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from nerfstudio.pipelines.base_pipeline import VanillaPipeline, VanillaPipelineConfig
from nerfstudio.utils.rich_utils import CONSOLE
from torch import Tensor
from torch.nn.parallel import DistributedDataParallel

from lrm_nerfstudio.data.lrm_datamanager import LRMDataManager, LRMDataManagerConfig
from lrm_nerfstudio.eval.image_metrics import mask_iou
from lrm_nerfstudio.model.lrm_model import LRMModel, LRMModelConfig
from lrm_nerfstudio.model.processor import ProcessorConfig
from lrm_nerfstudio.splat.gaussians import EmptyReconstructionError
from lrm_nerfstudio.training import distributed
from lrm_nerfstudio.training.cpu_memory import keep_freed_memory
from lrm_nerfstudio.training.deferred import deferred_backward
from lrm_nerfstudio.training.determinism import seed_torch_for_step
from lrm_nerfstudio.training.progressive import ProgressiveSpec, ProgressiveStage, parse_schedule, stage_at
from lrm_nerfstudio.viewer_controls import LRMViewerControls


def _model_key(key: str, prefix: str) -> str:
    """A checkpoint key with the model's prefix ("_model." or DDP's "_model.module.") replaced by `prefix`."""
    for old in ("_model.module.", "_model."):
        if key.startswith(old):
            return prefix + key[len(old) :]
    return key


class NonFiniteLossError(FloatingPointError):
    """A training loss became NaN or infinite; raised before the optimiser step so the weights stay good."""


@dataclass
class LRMPipelineConfig(VanillaPipelineConfig):
    """LRM pipeline: a multi-object datamanager feeding source views and target rays to the LRM model."""

    _target: type = field(default_factory=lambda: LRMPipeline)
    datamanager: LRMDataManagerConfig = field(default_factory=LRMDataManagerConfig)
    """Multi-object datamanager."""
    model: LRMModelConfig = field(default_factory=LRMModelConfig)
    """LRM model."""
    eval_split: Literal["val", "test"] = "test"
    """Held-out split of `ns-eval` and the full evaluation."""
    eval_max_objects: int | None = None
    """Evaluate at most this many held-out objects (None: all)."""
    deferred_backprop: bool = False
    """Deferred back-propagation (ARF §4.2): render memory bounded by deferred_chunk_rays, not the patch size."""
    deferred_chunk_rays: int = 4096
    """Rays rendered at once (with and without a graph) under deferred back-propagation."""
    progressive: tuple[ProgressiveSpec, ...] = ()
    """Progressive resolution: stages (start_step, patch_size, min_render_res, max_render_res, num_coarse_samples,
    num_importance_samples), each in force from its start step on; before the first, the datamanager's and model's
    own settings. Empty: off."""
    object_log_dir: Path | None = None
    """Append each training step's object ids to <dir>/objects-rank<R>.jsonl (checks the sharding across ranks)."""

    def __post_init__(self) -> None:
        # `ns-train --machine.device-type cpu --machine.num-devices N` needs this (training/distributed.py)
        distributed.install_cpu_launcher()
        if self.model.init_from is not None:
            # The weights decide the architecture and the processor (how source images are prepared), before
            # config.yml is written, so that the run's checkpoints reload through its own config.
            from lrm_nerfstudio.pretrained import adopt_architecture, load_pretrained

            adopt_architecture(self, load_pretrained(self.model.init_from, weights=False))


def adopt_legacy_processor(config: LRMPipelineConfig) -> None:
    """Give the model config of a config.yml written before models held their processor the processor that its
    datamanager's source_* fields described (yaml restores a dataclass without its newer fields)."""
    if "processor" in vars(config.model):
        return
    dm, default = vars(config.datamanager), ProcessorConfig()
    background = dm.get("source_background")
    config.model.processor = ProcessorConfig(
        resolution=int(dm.get("source_resolution", default.resolution)),
        background=None if background is None else tuple(float(c) for c in background),  # type: ignore[arg-type]
        resize=dm.get("source_resize", default.resize),
        foreground_ratio=float(dm.get("photo_foreground_ratio", default.foreground_ratio)),
    )


class LRMPipeline(VanillaPipeline):
    """Pipeline of LRM training and evaluation.

    Unlike per-scene NeRF pipelines, every step brings its own objects: the model predicts their triplanes from the
    source views in the batch and renders the target rays through them.
    """

    config: LRMPipelineConfig
    datamanager: LRMDataManager
    _model: LRMModel

    def __init__(self, config: LRMPipelineConfig, device: str | torch.device, **kwargs: Any) -> None:
        self._progressive = parse_schedule(config.progressive)  # bad stages fail before any loading
        if torch.device(device).type == "cpu":
            keep_freed_memory()  # a quarter off a CPU step: no page faults on each step's activations (cpu_memory.py)
        adopt_legacy_processor(config)
        config.datamanager.processor = config.model.processor  # the model owns its input contract
        with distributed.cpu_friendly_ddp():  # VanillaPipeline.__init__ wraps the model in DDP when world_size > 1
            super().__init__(config, device, **kwargs)
        dm, model = self.datamanager.config, self.model.config
        self._base_stage = ProgressiveStage(
            0, dm.patch_size, *dm.render_resolution_range, model.num_coarse_samples, model.num_importance_samples
        )
        self._stage: ProgressiveStage = self._base_stage
        image, camera, _ = self.datamanager.display_source
        self.model.set_display_source(image, camera)
        self.datamanager.before_display_rays = self.check_display_opacity
        self.viewer_controls = LRMViewerControls(self)
        """Object picker, source image, re-run and upload controls; nerfstudio's viewer finds them by itself."""

    @property
    def model(self) -> LRMModel:
        return super().model  # type: ignore[return-value]

    def show_object(self, ref: str) -> str:
        """Make object id or image path `ref` the reconstruction rendered by the viewer and the exporters."""
        self.datamanager.set_display_object(ref)  # exporters' rays and the viewer's cameras follow it
        image, camera, name = self.datamanager.display_source
        self.model.set_display_source(image, camera)
        return name

    @torch.no_grad()
    def check_display_opacity(self) -> float:
        """Render the display object on a grid of its views' pixels; the fraction of opaque (alpha > 0.5) rays.

        nerfstudio's `generate_point_cloud` (ns-export pointcloud / poisson) draws ray batches until it has kept
        `--num-points` points with alpha > 0.5, with no other bound, so on an empty reconstruction it would run
        forever. The datamanager calls this before the first test-mode rays of each display object.

        Raises:
            EmptyReconstructionError: fewer than `datamanager.min_opaque_fraction` of the rays are opaque.
        """
        dm = self.datamanager
        minimum = dm.config.min_opaque_fraction
        if minimum <= 0:
            return float("nan")
        name = dm.display_source[2]
        bundle = dm.display_probe_rays()
        chunk = self.model.config.eval_num_rays_per_chunk
        model = self.model
        outputs = [model(bundle[i : i + chunk]) for i in range(0, len(bundle), chunk)]
        accumulation = torch.cat([o["accumulation"].view(-1) for o in outputs])
        alpha = torch.cat([model.get_rgba_image(o)[..., 3].view(-1) for o in outputs])  # what the point cloud keeps
        opaque = float((accumulation > 0.5).float().mean()) if len(alpha) else 0.0
        fraction = float((alpha > 0.5).float().mean()) if len(alpha) else 0.0
        if fraction < 0.5 * opaque:
            # A soft field whose mesh level (render_display_surface) misses most of what it renders opaque, as an
            # untrained model's fog: its points go back to the median depth, which every opaque ray has.
            model.surface_depth = False
            alpha, fraction = accumulation, opaque
            CONSOLE.print(
                f"{name}: the surface level of its meshes crosses few of its opaque rays (a soft field); its points "
                "are at the rays' median depth instead.",
                highlight=False,
            )
        dm.set_export_opacity(alpha)  # export rays from then on aim at the opaque cells
        if fraction < minimum:
            raise EmptyReconstructionError(
                f"The reconstruction of {name!r} is empty or nearly empty: {fraction:.2%} of {len(alpha)} rays from "
                f"its views are opaque (alpha > 0.5; the export needs at least {minimum:.2%}, "
                "pipeline.datamanager.min_opaque_fraction), so a point cloud of it would never fill up. Train the "
                "model longer, or export another object: set pipeline.datamanager.display_object in the config.yml "
                "to another object id or an image path."
            )
        # no points-per-batch figure: the export rays that follow come only from the opaque cells, so most of them
        # (about 4 in 5 on a trained model) become points, far more than this fraction of the whole orbit would say
        CONSOLE.print(
            f"{name}: {fraction:.1%} of {len(alpha)} probe rays of its export orbit are opaque; the export draws its "
            "rays from those cells only",
            highlight=False,
        )
        return fraction

    # ------------------------------------------------------------------------------------------------- training
    def _forward_batch(self, ray_bundle, batch: dict[str, Any]) -> dict[str, Any]:
        return self._model(ray_bundle, batch["source_images"].to(self.device), batch["source_cameras"].to(self.device))

    def get_train_loss_dict(self, step: int):
        self.apply_progressive_stage(step)
        ray_bundle, batch = self.datamanager.next_train(step)
        # The samplers' jitter comes from torch's global RNG: seed it per step so that a resumed run repeats. After
        # fetching the batch: building a DataLoader iterator (at the first step, after resuming, at a progressive
        # stage) draws its base seed from that RNG, which would otherwise shift this step's samples.
        seed_torch_for_step(self.datamanager.config.seed, step, distributed.global_rank())
        if self.config.object_log_dir is not None:
            self._log_objects(step, batch["object_ids"])
        if self.config.deferred_backprop:
            outputs, loss_dict = self._deferred_step(ray_bundle, batch)
            metrics_dict = self.model.get_metrics_dict(outputs, batch)
        else:
            outputs = self._forward_batch(ray_bundle, batch)
            metrics_dict = self.model.get_metrics_dict(outputs, batch)
            loss_dict = self.model.get_loss_dict(outputs, batch, metrics_dict)
        bad = {name: float(value) for name, value in loss_dict.items() if not torch.isfinite(value).all()}
        if bad:
            raise NonFiniteLossError(
                f"Non-finite training loss at step {step}: {bad} (objects {batch.get('object_ids')}). Training "
                "stopped before the optimiser step, so the weights and the last saved checkpoint are intact. Try a "
                "lower learning rate, stronger gradient clipping (optimizers.*.optimizer.max-norm) or fp32."
            )
        return outputs, loss_dict, metrics_dict

    def apply_progressive_stage(self, step: int) -> ProgressiveStage:
        """Set patch size, render resolutions and samples per ray to `pipeline.progressive`'s stage at `step`.

        A function of the step only, so a resumed run trains exactly as an uninterrupted one would.
        """
        stage = stage_at(self._progressive, step) or self._base_stage
        if stage[1:] != self._stage[1:]:
            self.datamanager.set_patch_sampling(stage.patch_size, stage.render_resolution_range)
            self.model.set_samples_per_ray(stage.num_coarse_samples, stage.num_importance_samples)
            if self._progressive and stage is not self._base_stage:
                CONSOLE.print(
                    f"Step {step}: patch {stage.patch_size}, render resolution {stage.render_resolution_range}, "
                    f"{stage.num_coarse_samples}+{stage.num_importance_samples} samples per ray"
                )
        self._stage = stage
        return stage

    def _log_objects(self, step: int, object_ids: list[str]) -> None:
        rank = distributed.global_rank()
        path = Path(self.config.object_log_dir) / f"objects-rank{rank}.jsonl"  # type: ignore[arg-type]
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("a") as f:
            f.write(json.dumps({"step": step, "rank": rank, "objects": list(object_ids)}) + "\n")

    def _deferred_step(self, ray_bundle, batch: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Tensor]]:
        """Forward and backward by deferred back-propagation; the returned losses' backward adds nothing.

        The trainer zeroes the gradients before `get_train_loss_dict` and calls `loss.backward()` after it, so the
        gradients are complete here and the returned losses are detached leaves. DDP's hooks only fire after a
        forward through DDP, which this path bypasses, so the gradients are averaged across ranks here.
        """
        scaler = self.model.kwargs.get("grad_scaler")
        scale = float(scaler.get_scale()) if scaler is not None and scaler.is_enabled() else 1.0
        outputs, loss_dict = deferred_backward(
            self.model,
            ray_bundle,
            batch,
            batch["source_images"].to(self.device),
            batch["source_cameras"].to(self.device),
            chunk_rays=self.config.deferred_chunk_rays,
            seed=int(torch.randint(0, 2**62, ())),  # drawn from the step-seeded RNG
            grad_scale=scale,
        )
        distributed.average_gradients(self.model.parameters())
        return outputs, {name: value.requires_grad_(True) for name, value in loss_dict.items()}

    @torch.no_grad()
    def get_eval_loss_dict(self, step: int):
        self.eval()
        ray_bundle, batch = self.datamanager.next_eval(step)
        # the bare model, not DDP: a DDP forward with no backward after it would stall the next training step
        outputs = self.model(
            ray_bundle, batch["source_images"].to(self.device), batch["source_cameras"].to(self.device)
        )
        metrics_dict = self.model.get_metrics_dict(outputs, batch)
        loss_dict = self.model.get_loss_dict(outputs, batch, metrics_dict)
        self.train()
        return outputs, loss_dict, metrics_dict

    # ------------------------------------------------------------------------------------------------- evaluation
    @torch.no_grad()
    def render_eval_view(self, camera, batch: dict[str, Any], compute_normals: bool = True) -> dict[str, Tensor]:
        """Render one held-out view from its object's source image alone (normals too unless `compute_normals` is
        off, which saves the density-gradient pass when only colour and accumulation are scored)."""
        triplanes = self.model.predict_triplanes(
            batch["source_images"].to(self.device), batch["source_cameras"].to(self.device)
        )
        return self.model.render_camera(camera, triplanes, compute_normals=compute_normals)

    @torch.no_grad()
    def get_eval_image_metrics_and_images(self, step: int):
        self.eval()
        camera, batch = self.datamanager.next_eval_image(step)
        outputs = self.render_eval_view(camera, batch)
        metrics_dict, images_dict = self.model.get_image_metrics_and_images(outputs, batch)
        metrics_dict["num_rays"] = float(camera.height.item() * camera.width.item())
        self.train()
        return metrics_dict, images_dict

    @torch.no_grad()
    def get_average_eval_image_metrics(
        self, step: int | None = None, output_path: Path | None = None, get_std: bool = False
    ) -> dict[str, float]:
        """Mean PSNR/SSIM/LPIPS over held-out views of held-out objects, each predicted from its source view.

        Also reports `background_psnr`: the PSNR of predicting the background colour everywhere, the floor any
        reconstruction must beat.
        """
        self.eval()
        rows: list[dict[str, float]] = []
        objects = set()
        for camera, batch in self.datamanager.iter_eval_views(
            split=self.config.eval_split, max_objects=self.config.eval_max_objects
        ):
            outputs = self.render_eval_view(camera, batch, compute_normals=False)
            image = batch["image"].to(self.device)
            row = self.model.image_metrics(outputs["rgb"], image)
            background = batch.get("background_color")
            background = torch.ones(3, device=self.device) if background is None else background.to(self.device).view(3)
            mse_bg = torch.mean((image - background) ** 2)
            row["background_psnr"] = float(-10.0 * torch.log10(mse_bg.clamp(min=1e-10)))
            if "alpha" in batch:
                row["mask_iou"] = mask_iou(outputs["accumulation"], batch["alpha"].reshape(image.shape[:2] + (1,)))
            rows.append(row)
            objects.update(batch["object_ids"])
            if output_path is not None:
                self._save_eval_image(output_path, len(rows) - 1, image, outputs["rgb"])
        self.train()
        if not rows:
            raise RuntimeError(f"No {self.config.eval_split} views to evaluate in {self.datamanager.get_datapath()}")
        result: dict[str, float] = {}
        for key in rows[0]:
            values = torch.tensor([row[key] for row in rows if key in row])
            result[key] = float(values.mean())
            if get_std:
                result[f"{key}_std"] = float(values.std()) if len(values) > 1 else 0.0
        result["num_views"] = float(len(rows))
        result["num_objects"] = float(len(objects))
        CONSOLE.print(
            f"Held-out ({self.config.eval_split}): PSNR {result['psnr']:.2f} dB (background-only "
            f"{result['background_psnr']:.2f} dB), SSIM {result['ssim']:.3f}"
            + (f", LPIPS {result['lpips']:.3f}" if "lpips" in result else ", LPIPS unavailable")
            + (f", mask IoU {result['mask_iou']:.3f}" if "mask_iou" in result else "")
            + f" over {len(rows)} views of {len(objects)} objects"
        )
        return result

    @staticmethod
    def _save_eval_image(output_path: Path, index: int, image: Tensor, rgb: Tensor) -> None:
        from PIL import Image

        output_path.mkdir(parents=True, exist_ok=True)
        pair = torch.cat([image, rgb.clamp(0, 1)], dim=1)
        Image.fromarray((pair.cpu().numpy() * 255).round().astype("uint8")).save(output_path / f"{index:05d}.png")

    # ------------------------------------------------------------------------------------------------- checkpoints
    def load_pipeline(self, loaded_state: dict[str, Any], step: int) -> None:
        # a multi-process run saves the model under "_model.module." (DDP): load either layout into either
        prefix = "_model.module." if isinstance(self._model, DistributedDataParallel) else "_model."
        super().load_pipeline({_model_key(key, prefix): value for key, value in loaded_state.items()}, step)
        self.apply_progressive_stage(step)  # ns-export / ns-eval render with the samples the checkpoint trained with
        self.model.refresh_display()  # the display triplane came from the old weights
