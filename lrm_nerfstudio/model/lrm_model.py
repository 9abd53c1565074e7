"""LRM: image -> triplane transformer -> triplane NeRF, rendered with nerfstudio's samplers and renderers.

Implements Hong et al. 2023 (arXiv 2311.04400): §3.1 image encoder and camera features, §3.2 image-to-triplane
decoder and triplane NeRF, §3.3 training objective.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import torch
from jaxtyping import Float, Int
from nerfstudio.cameras.cameras import Cameras
from nerfstudio.cameras.rays import RayBundle, RaySamples
from nerfstudio.engine.callbacks import TrainingCallback, TrainingCallbackAttributes, TrainingCallbackLocation
from nerfstudio.field_components.field_heads import FieldHeadNames
from nerfstudio.model_components.ray_samplers import PDFSampler, UniformSampler
from nerfstudio.model_components.renderers import AccumulationRenderer, DepthRenderer, NormalsRenderer, RGBRenderer
from nerfstudio.model_components.scene_colliders import AABBBoxCollider
from nerfstudio.models.base_model import Model, ModelConfig
from nerfstudio.utils import colormaps
from torch import Tensor
from torch.nn import Parameter

from lrm_nerfstudio.model.camera_embedder import CameraEmbedderConfig
from lrm_nerfstudio.model.encoder import ImageEncoderConfig
from lrm_nerfstudio.model.losses import PerceptualLoss, PerceptualNet, triplane_tv_loss
from lrm_nerfstudio.model.metrics import image_quality
from lrm_nerfstudio.model.pixel_lift import PixelLiftConfig
from lrm_nerfstudio.model.processor import ProcessorConfig
from lrm_nerfstudio.model.triplane_field import TriplaneFieldConfig
from lrm_nerfstudio.model.triplane_transformer import TriplaneTransformerConfig
from lrm_nerfstudio.model.upsampler import TriplaneUpsamplerConfig

MIN_SAMPLES_PER_RAY = 4
"""Fewest coarse (and importance) samples `LRMModel.samples_per_ray` gives a ray with a short interval of its own."""

SURFACE_LEVEL_RESOLUTION = 128
"""`render_display_surface` uses the density level that marching cubes at this resolution pick (lrm-eval's)."""
SURFACE_BISECTIONS = 6
"""Bisection steps from the samples that bracket a ray's surface crossing: 1/64 of the sample spacing there."""

ARCHITECTURE_FIELDS = (
    "encoder",
    "camera_embedder",
    "transformer",
    "upsampler",
    "pixel_lift",
    "field",
    "sampler",
    "compositing",
    "num_coarse_samples",
    "num_importance_samples",
    "processor",
)
"""LRMModelConfig fields that decide which weights fit, and the input contract they were trained with (all taken
from `init_from`)."""


@dataclass
class LRMModelConfig(ModelConfig):
    """LRM model: encoder, camera embedder, triplane transformer, upsampler and triplane field."""

    _target: type = field(default_factory=lambda: LRMModel)
    encoder: ImageEncoderConfig = field(default_factory=ImageEncoderConfig)
    """Image encoder (ViT / DINO)."""
    camera_embedder: CameraEmbedderConfig = field(default_factory=CameraEmbedderConfig)
    """MLP embedding the 16-d source camera for adaLN modulation."""
    transformer: TriplaneTransformerConfig = field(default_factory=TriplaneTransformerConfig)
    """Image-to-triplane decoder (its cond_dim and mod_dim follow the encoder and camera embedder)."""
    upsampler: TriplaneUpsamplerConfig = field(default_factory=TriplaneUpsamplerConfig)
    """ConvTranspose upsampler of the planes (its input width follows the transformer)."""
    pixel_lift: PixelLiftConfig = field(default_factory=PixelLiftConfig)
    """Source image lifted along the canonical camera's rays and added to the upsampled planes (off unless
    enabled; its widths follow the encoder and the upsampler)."""
    processor: ProcessorConfig = field(default_factory=ProcessorConfig)
    """How a source image is prepared for this model (resolution, background, resize, foreground ratio)."""
    field: TriplaneFieldConfig = field(default_factory=TriplaneFieldConfig)
    """Triplane NeRF decoder (its input channels follow the upsampler)."""
    sampler: Literal["pdf", "midpoint"] = "pdf"
    """pdf: stratified uniform samples in the scene box, then importance samples from their weights (LRM, OpenLRM).
    midpoint (TripoSR): `num_coarse_samples` midpoints of equal intervals between the ray's entry into and exit
    from the field's box, composited with alpha = 1 - exp(-density / num_coarse_samples) (TripoSR's interval is 1/N
    of the ray's chord, not a world distance)."""
    compositing: Literal["sample", "interval"] = "sample"
    """sample: each sample's density and colour over its own bin (nerfstudio). interval (OpenLRM, sampler pdf):
    the samples bound intervals, each with the mean of its end points' raw density and colour."""
    num_coarse_samples: int = 64
    """Uniform samples per ray inside the scene box."""
    num_importance_samples: int = 64
    """PDF (importance) samples per ray, added to the uniform ones (sampler pdf)."""
    coarse_pass_with_grad: bool = False
    """Back-propagate through the coarse pass too. Off: the coarse samples are re-evaluated with gradients in the
    fine pass anyway (the PDF sampler keeps them), so this only costs time."""
    near_plane: float = 0.05
    """Nearest distance along a ray that is rendered."""
    rgb_loss_mult: float = 1.0
    """Weight of the MSE colour loss."""
    lpips_loss_mult: float = 1.0
    """Weight of the LPIPS loss (λ of the paper); ignored when LPIPS weights are unavailable."""
    mask_loss_mult: float = 0.5
    """Weight of the MSE between rendered accumulation and the target alpha."""
    depth_loss_mult: float = 0.0
    """Weight of the L1 depth loss on foreground rays (0 = off; needs depth in the data)."""
    tv_loss_mult: float = 5e-4
    """Weight of the triplane total-variation loss."""
    use_lpips: bool = True
    """Use LPIPS (loss and metric) when its backbone weights are in the torch cache."""
    perceptual_net: PerceptualNet = "vgg"
    """LPIPS backbone."""
    amp_dtype: Literal["bfloat16", "float16", "none"] = "bfloat16"
    """Autocast dtype of the encoder and transformer on CUDA. Never used on CPU, where bf16 is very slow."""
    display_refresh_steps: int = 10
    """The triplane shown in the viewer and used by exporters is re-predicted after this many training steps."""
    compute_normals_in_training: bool = False
    """Render normals for training rays too (costs a density-gradient pass)."""
    preview_num_gaussians: int = 100_000
    """Gaussians of the viewer's gsplat preview (its "Gaussian preview" checkbox; CUDA only)."""
    init_from: Path | None = None
    """Start training from these weights: a file of lrm-import-weights / lrm-export-weights, or a released
    TripoSR / OpenLRM folder. Its architecture and processor replace this config's (ARCHITECTURE_FIELDS);
    ignored when resuming from a checkpoint (--load-dir)."""


class LRMModel(Model):
    """Large Reconstruction Model (Hong et al. 2023).

    `forward(ray_bundle, source_images, source_cameras)` predicts one triplane per source image and renders the
    rays with it, in one call so that DDP sees the whole graph. Without sources it renders the *display triplane*:
    the reconstruction of the display source (set by the pipeline, the viewer or the exporter), re-predicted under
    `no_grad` from the current weights. That state is separate from training's, so the viewer's thread can render
    while training runs (docs/ARCHITECTURE.md, nerfstudio's traps).
    """

    config: LRMModelConfig

    def populate_modules(self) -> None:
        super().populate_modules()
        cfg = self.config
        self.encoder = cfg.encoder.setup()
        # TripoSR's decoder has no camera input, hence no camera embedder.
        self.camera_embedder = cfg.camera_embedder.setup() if cfg.transformer.uses_camera else None
        mod_dim = self.camera_embedder.out_dim if self.camera_embedder is not None else cfg.transformer.mod_dim
        self.transformer = replace(cfg.transformer, cond_dim=self.encoder.out_dim, mod_dim=mod_dim).setup()
        self.upsampler = replace(cfg.upsampler, in_dim=cfg.transformer.inner_dim).setup()
        self.pixel_lift = (
            replace(
                cfg.pixel_lift,
                cond_dim=self.encoder.out_dim,
                out_dim=self.upsampler.out_dim,
                resolution=cfg.transformer.triplane_low_res * cfg.upsampler.scale,
            ).setup()
            if cfg.pixel_lift.enabled
            else None
        )
        self.field = replace(cfg.field, triplane_dim=self.upsampler.out_dim).setup()

        self.collider = AABBBoxCollider(self.scene_box, near_plane=cfg.near_plane)
        self.sampler_uniform = UniformSampler(num_samples=cfg.num_coarse_samples)
        self.sampler_pdf = PDFSampler(num_samples=cfg.num_importance_samples, include_original=True)
        self.renderer_rgb = RGBRenderer(background_color="black")
        self.renderer_accumulation = AccumulationRenderer()
        self.renderer_depth = DepthRenderer(method="median")
        self.renderer_expected_depth = DepthRenderer(method="expected")
        self.renderer_normals = NormalsRenderer()

        # Kept out of the module tree: LPIPS is frozen and optional, so it must neither bloat checkpoints nor make
        # them unloadable on a machine without its backbone weights.
        self.__dict__["perceptual"] = PerceptualLoss(cfg.perceptual_net, enabled=cfg.use_lpips)

        self._display_lock = threading.Lock()
        self._display_source: tuple[Tensor, Tensor] | None = None
        self._display_triplanes: Tensor | None = None
        self._display_step = -1
        self._step = 0
        self.splat_preview = False
        """Render source-less cameras (the viewer) by rasterising Gaussians of the display triplane with gsplat
        (`render_camera_gaussians`) instead of volume rendering; the viewer's checkbox sets it. CUDA only."""
        self._preview: tuple[Tensor, Any] | None = None  # (display triplane, its Gaussians)
        self._surface_level: tuple[Tensor, float | None] | None = None  # (display triplane, its surface level)
        self.surface_depth = True
        """`render_display_surface`: depth at the surface level (True) or the median depth."""

    # ----------------------------------------------------------------------------------------------- parameters
    def get_param_groups(self) -> dict[str, list[Parameter]]:
        encoder = list(self.encoder.parameters())
        encoder_ids = {id(p) for p in encoder}
        decoder = [p for p in self.parameters() if id(p) not in encoder_ids]
        return {"encoder": encoder, "decoder": decoder}

    def get_training_callbacks(
        self, training_callback_attributes: TrainingCallbackAttributes
    ) -> list[TrainingCallback]:
        def count_step(step: int) -> None:
            self._step = step + 1

        return [TrainingCallback([TrainingCallbackLocation.AFTER_TRAIN_ITERATION], count_step)]

    # ----------------------------------------------------------------------------------------------- prediction
    def _autocast(self, device: torch.device):
        enabled = device.type == "cuda" and self.config.amp_dtype != "none"
        dtype = torch.bfloat16 if self.config.amp_dtype == "bfloat16" else torch.float16
        return torch.autocast(device_type=device.type, dtype=dtype, enabled=enabled)

    def embed_camera(self, source_cameras: Float[Tensor, "B 16"]) -> Float[Tensor, "B D_mod"] | None:
        """Camera embedding for the decoder's adaLN; None for a decoder without camera input (TripoSR)."""
        return None if self.camera_embedder is None else self.camera_embedder(source_cameras)

    def predict_triplanes(
        self,
        source_images: Float[Tensor, "B 3 H W"],
        source_cameras: Float[Tensor, "B 16"],
        stage: Callable[[str], AbstractContextManager] | None = None,
    ) -> Float[Tensor, "B 3 C R R"]:
        """Image-to-triplane (§3.1-3.2): encode, embed the camera, decode tokens, upsample, add the pixel lift.

        The one image-to-triplane path: training, the viewer, lrm-reconstruct, lrm-eval and the exporters all
        call it.

        Args:
            source_images: RGB in [0, 1] at the model's source resolution, composited on its background (the
                encoder normalises them, or not, as its config says).
            source_cameras: camera vectors (`lrm_nerfstudio.cameras.camera_vector`); ignored by a decoder without
                camera input.
            stage: called as `with stage("encode"):` around the ViT and `with stage("decode"):` around the rest
                (e.g. to time them); None: no hook.

        Returns:
            The triplane, in the layout `field.config.plane_axes` reads.
        """
        stage = stage or (lambda _: nullcontext())
        with self._autocast(source_images.device):
            with stage("encode"):
                tokens = self.encoder(source_images)
            with stage("decode"):
                cam = self.embed_camera(source_cameras)
                planes = self.transformer(tokens, cam)
                planes = self.upsampler(planes)
                if self.pixel_lift is not None:
                    planes = planes + self.pixel_lift(source_images, tokens)
        return planes.float()

    # ----------------------------------------------------------------------------------------------- rendering
    def render_triplanes(
        self,
        ray_bundle: RayBundle,
        triplanes: Float[Tensor, "B 3 C R R"],
        compute_normals: bool = False,
        keep_density: bool = False,
    ) -> dict[str, Any]:
        """Volume-render rays through their object's triplane (coarse uniform + importance samples, or midpoints).

        Args:
            ray_bundle: rays in the project's frame; `metadata["object_index"]` picks each ray's triplane (default 0)
                and `metadata["background_color"]` its background (default white).
            triplanes: from `predict_triplanes`.
            compute_normals: also render normals from the density gradient.
            keep_density: also return the final samples' densities as "sample_density" [N, S, 1] (their samples are
                `ray_samples_list[-1]`).
        """
        if self.config.sampler == "midpoint":
            return self._render_midpoints(ray_bundle, triplanes, compute_normals, keep_density)
        num_coarse, num_importance = self.samples_per_ray(ray_bundle)
        if ray_bundle.nears is None or ray_bundle.fars is None:
            ray_bundle = self.collider(ray_bundle)
        metadata = ray_bundle.metadata or {}
        object_index = metadata.get("object_index")
        if object_index is None:
            object_index = torch.zeros(len(ray_bundle), 1, dtype=torch.long, device=triplanes.device)
        object_index = object_index.long()

        ray_samples_uniform = self.sampler_uniform(ray_bundle, num_samples=num_coarse)
        with torch.set_grad_enabled(torch.is_grad_enabled() and self.config.coarse_pass_with_grad):
            coarse = self.field(ray_samples_uniform, triplanes, object_index)
            weights_coarse = ray_samples_uniform.get_weights(coarse[FieldHeadNames.DENSITY])
        ray_samples = self.sampler_pdf(
            ray_bundle, ray_samples_uniform, weights_coarse.detach(), num_samples=num_importance
        )
        normals = None
        if self.config.compositing == "interval":
            ray_samples, density, rgb = self._interval_composite(ray_bundle, ray_samples, triplanes, object_index)
            if compute_normals:
                normals = self.field(ray_samples, triplanes, object_index, compute_normals=True)[FieldHeadNames.NORMALS]
        else:
            fine = self.field(ray_samples, triplanes, object_index, compute_normals=compute_normals)
            density, rgb = fine[FieldHeadNames.DENSITY], fine[FieldHeadNames.RGB]
            normals = fine.get(FieldHeadNames.NORMALS)
        outputs = self._composite(metadata, ray_samples, density, rgb, normals, (weights_coarse, ray_samples_uniform))
        if keep_density:
            outputs["sample_density"] = density
        return outputs

    def _composite(
        self,
        metadata: dict[str, Any],
        ray_samples: RaySamples,
        density: Float[Tensor, "N S 1"],
        rgb: Float[Tensor, "N S 3"],
        normals: Float[Tensor, "N S 3"] | None,
        coarse: tuple[Tensor, RaySamples] | None = None,
    ) -> dict[str, Any]:
        """Render outputs of rays from their samples' density, colour (and normals); `coarse` is the (weights, ray
        samples) of a first sampling pass, listed before the final ones for the PDF / proposal consumers."""
        weights = ray_samples.get_weights(density)
        rgb_premultiplied = self.renderer_rgb(rgb=rgb, weights=weights)
        accumulation = self.renderer_accumulation(weights=weights)
        background = metadata.get("background_color")
        if background is None:
            background = torch.ones_like(rgb_premultiplied)
        outputs: dict[str, Any] = {
            "rgb": rgb_premultiplied + (1.0 - accumulation) * background,
            "rgb_premultiplied": rgb_premultiplied,
            "accumulation": accumulation,
            "depth": self.renderer_depth(weights=weights, ray_samples=ray_samples),
            "expected_depth": self.renderer_expected_depth(weights=weights, ray_samples=ray_samples),
            "weights_list": ([coarse[0]] if coarse is not None else []) + [weights],
            "ray_samples_list": ([coarse[1]] if coarse is not None else []) + [ray_samples],
        }
        if "directions_norm" in metadata:  # |camera-space direction| at z = -1: turns ray distance into z-depth
            outputs["directions_norm"] = metadata["directions_norm"]
        if normals is not None:
            normals = self.renderer_normals(normals=normals, weights=weights)
            outputs["normals"] = (normals + 1.0) / 2.0  # nerfstudio's exporters expect normals in [0, 1]
        return outputs

    def _interval_composite(
        self,
        ray_bundle: RayBundle,
        ray_samples: RaySamples,
        triplanes: Float[Tensor, "B 3 C R R"],
        object_index: Int[Tensor, "N 1"],
    ) -> tuple[RaySamples, Float[Tensor, "N S1 1"], Float[Tensor, "N S1 3"]]:
        """OpenLRM's compositing (its MipRayMarcher, rewritten from the maths): the S sample points bound S - 1
        intervals; each gets the mean of its two end points' raw density (activated after averaging) and colour,
        and its world length as delta."""
        depths = (ray_samples.frustums.starts + ray_samples.frustums.ends) / 2  # [N, S, 1]
        raw, rgb, inside = self.field.decode_samples(ray_samples.frustums.get_positions(), triplanes, object_index)
        density = self.field.activate_density((raw[:, 1:] + raw[:, :-1]) / 2, inside[:, 1:] & inside[:, :-1])
        intervals = ray_bundle.get_ray_samples(bin_starts=depths[:, :-1], bin_ends=depths[:, 1:])
        return intervals, density, (rgb[:, 1:] + rgb[:, :-1]) / 2

    def _render_midpoints(
        self, ray_bundle: RayBundle, triplanes: Float[Tensor, "B 3 C R R"], compute_normals: bool, keep_density: bool
    ) -> dict[str, Any]:
        """TripoSR's renderer: N midpoints between entry and exit of the box, delta = 1/N, no importance pass."""
        metadata = ray_bundle.metadata or {}
        object_index = metadata.get("object_index")
        if object_index is not None:
            object_index = object_index.long()
        n = self.sampler_uniform.num_samples
        half = self.field.config.box_radius * (1 - 1e-3)  # TripoSR shrinks its box by 1e-3
        origins, directions = ray_bundle.origins, ray_bundle.directions
        t0, t1 = (-half - origins) / directions, (half - origins) / directions
        near = torch.minimum(t0, t1).amax(dim=-1, keepdim=True).clamp_min(0.0)
        far = torch.maximum(t0, t1).amin(dim=-1, keepdim=True)
        valid = (far - near) > 0.01
        far = torch.where(valid, far, near + 0.01)  # missing rays: an empty interval, masked below
        edges = torch.linspace(0.0, 1.0, n + 1, device=origins.device, dtype=origins.dtype)
        bins = near + (far - near) * edges  # [N, n + 1]
        ray_samples = ray_bundle.get_ray_samples(bin_starts=bins[:, :-1, None], bin_ends=bins[:, 1:, None])
        ray_samples.deltas = torch.full_like(ray_samples.deltas, 1.0 / n)  # TripoSR's delta: 1/N of the chord
        out = self.field(ray_samples, triplanes, object_index, compute_normals=compute_normals)
        density = out[FieldHeadNames.DENSITY] * valid[:, None].to(origins.dtype)
        outputs = self._composite(
            metadata, ray_samples, density, out[FieldHeadNames.RGB], out.get(FieldHeadNames.NORMALS)
        )
        if keep_density:
            outputs["sample_density"] = density
        return outputs

    def samples_per_ray(self, ray_bundle: RayBundle) -> tuple[int, int]:
        """Coarse and importance samples for these rays.

        A ray across the box gets the method's counts. Rays that come with their own, shorter interval (`nears` and
        `fars` set by the caller) get as many as keep that spacing, and at least `MIN_SAMPLES_PER_RAY` of each:
        nerfstudio's texture rays in `ns-export poisson` span two edge lengths at the surface, about 2 % of the
        box, and were rendered with the full count, 4.2 M of them at the default 2048^2 texture."""
        coarse, importance = self.sampler_uniform.num_samples, self.sampler_pdf.num_samples
        if ray_bundle.nears is None or ray_bundle.fars is None or len(ray_bundle) == 0:
            return coarse, importance
        across_box = float((self.scene_box.aabb[1] - self.scene_box.aabb[0]).min())
        fraction = float((ray_bundle.fars - ray_bundle.nears).max()) / across_box
        if not fraction < 1.0:  # also NaN
            return coarse, importance
        scaled = lambda n: min(n, max(MIN_SAMPLES_PER_RAY, math.ceil(n * fraction)))
        return scaled(coarse), scaled(importance)

    def set_samples_per_ray(self, num_coarse: int, num_importance: int) -> None:
        """Samples per ray from now on (progressive resolution, training/progressive.py); the config keeps the
        method's own values."""
        self.sampler_uniform.num_samples = int(num_coarse)
        self.sampler_pdf.num_samples = int(num_importance)

    # ----------------------------------------------------------------------------------------------- display state
    def set_display_source(self, image: Float[Tensor, "3 H W"], camera: Float[Tensor, "16"]) -> None:
        """Choose the reconstruction that source-less calls (viewer, exporters) render."""
        with self._display_lock:
            self._display_source = (image.detach().to(self.device), camera.detach().to(self.device))
            self._display_triplanes = None
            self.surface_depth = True

    def refresh_display(self) -> None:
        """Forget the display triplane so that the next source-less call re-predicts it."""
        with self._display_lock:
            self._display_triplanes = None

    def display_triplanes(self) -> Float[Tensor, "1 3 C R R"]:
        """The display triplane, re-predicted from the current weights when stale."""
        with self._display_lock:
            if self._display_source is None:
                raise RuntimeError(
                    "LRMModel: nothing to render without a source image. Call set_display_source(image, camera) "
                    "(the LRM pipeline does this from --pipeline.datamanager.display-object)."
                )
            stale = self._step - self._display_step >= self.config.display_refresh_steps
            if self._display_triplanes is None or stale:
                image, camera = self._display_source
                with torch.no_grad():
                    self._display_triplanes = self.predict_triplanes(image[None], camera[None])
                self._display_step = self._step
            return self._display_triplanes

    @torch.no_grad()
    def render_camera_gaussians(self, camera: Cameras) -> dict[str, Tensor]:
        """Render one camera view of the display triplane as Gaussians with gsplat: the viewer's fast preview.

        The Gaussians (`preview_num_gaussians` of them, `lrm_nerfstudio.splat.gaussians_from_triplane`) are made
        once per display triplane, so they follow training at its display refresh.

        Raises:
            GsplatUnavailableError: no CUDA device or no gsplat extension here.
            EmptyReconstructionError: the display triplane holds no surface to place Gaussians on.
        """
        from lrm_nerfstudio.splat.convert import SplatConversionConfig, gaussians_from_triplane
        from lrm_nerfstudio.splat.render import GsplatUnavailableError, gsplat_unavailable_reason, render_gaussians

        reason = gsplat_unavailable_reason(self.device)
        if reason is not None:
            raise GsplatUnavailableError(reason)
        triplanes = self.display_triplanes()
        cached = self._preview
        if cached is None or cached[0] is not triplanes:
            conversion = SplatConversionConfig(num_gaussians=self.config.preview_num_gaussians)
            cached = self._preview = (triplanes, gaussians_from_triplane(self.field, triplanes, conversion))
        white = torch.ones(3, device=self.device)
        rgb, accumulation = render_gaussians(cached[1], camera.to(self.device), white)
        return {"rgb": rgb[0], "accumulation": accumulation[0]}

    def get_outputs_for_camera(self, camera: Cameras, obb_box=None) -> dict[str, Tensor]:
        """nerfstudio's viewer render: gsplat's rasteriser when the Gaussian preview is on and can run, else the
        volume renderer (also when the reconstruction is still empty)."""
        if self.splat_preview:
            from lrm_nerfstudio.splat.gaussians import EmptyReconstructionError
            from lrm_nerfstudio.splat.render import GsplatUnavailableError

            try:
                return self.render_camera_gaussians(camera)
            except (GsplatUnavailableError, EmptyReconstructionError):
                pass
        bundle = camera.generate_rays(camera_indices=0, keep_shape=True, obb_box=obb_box)
        return self.get_outputs_for_camera_ray_bundle(bundle, compute_normals=True)

    @torch.no_grad()
    def get_outputs_for_camera_ray_bundle(
        self, camera_ray_bundle: RayBundle, compute_normals: bool = False
    ) -> dict[str, Tensor]:
        """nerfstudio's chunked render of an [H, W] bundle with the display triplane; normals (a density-gradient
        pass per sample) only when asked. The viewer and evaluation ask (`get_outputs_for_camera`); nerfstudio's
        exporters call this directly for colour and depth (the texture of `ns-export poisson`: 2048^2 rays) and
        get none. `forward` (`ns-export pointcloud`/`poisson`'s points) still renders normals."""
        triplanes = self.display_triplanes()
        height, width = camera_ray_bundle.origins.shape[:2]
        chunk = self.config.eval_num_rays_per_chunk
        pieces: dict[str, list[Tensor]] = {}
        for start in range(0, len(camera_ray_bundle), chunk):
            part = camera_ray_bundle.get_row_major_sliced_ray_bundle(start, start + chunk).to(self.device)
            outputs = self.render_triplanes(part, triplanes, compute_normals=compute_normals)
            for key, value in outputs.items():
                if isinstance(value, Tensor):
                    pieces.setdefault(key, []).append(value.to(camera_ray_bundle.directions.device))
        return {key: torch.cat(value).view(height, width, -1) for key, value in pieces.items()}

    # ----------------------------------------------------------------------------------------------- nerfstudio API
    def forward(
        self,
        ray_bundle: RayBundle,
        source_images: Float[Tensor, "B 3 H W"] | None = None,
        source_cameras: Float[Tensor, "B 16"] | None = None,
    ) -> dict[str, Any]:
        if source_images is None:
            return self.render_display_surface(ray_bundle)
        if source_cameras is None:
            raise ValueError("LRMModel.forward: source_images given without source_cameras")
        triplanes = self.predict_triplanes(source_images, source_cameras)
        outputs = self.render_triplanes(
            ray_bundle, triplanes, compute_normals=self.config.compute_normals_in_training and self.training
        )
        outputs["triplanes"] = triplanes
        return outputs

    def get_outputs(self, ray_bundle: RayBundle) -> dict[str, Any]:
        return self.forward(ray_bundle)

    @torch.no_grad()
    def display_surface_level(self) -> float | None:
        """The density level of the display object's surface: the level `extract_mesh` picks by itself at
        `SURFACE_LEVEL_RESOLUTION` (lrm-eval's and the demo's meshes), chosen once per display triplane; None when
        the field has no surface (`NoSurfaceError`)."""
        from lrm_nerfstudio.mesh.marching_cubes import NoSurfaceError, surface_level

        triplanes = self.display_triplanes()
        cached = self._surface_level
        if cached is None or cached[0] is not triplanes:
            density = lambda points: self.field.density_at(points[None], triplanes)[0, :, 0]
            try:
                level: float | None = surface_level(density, SURFACE_LEVEL_RESOLUTION, device=self.device).value
            except NoSurfaceError:
                level = None
            cached = self._surface_level = (triplanes, level)
        return cached[1]

    def render_display_surface(self, ray_bundle: RayBundle) -> dict[str, Any]:
        """The display object's rays for nerfstudio's point cloud (`ns-export pointcloud` and `poisson`).

        Colour and opacity are the volume render's. "depth" is where the ray first crosses the surface level
        (`display_surface_level`, the level of the project's marching-cubes meshes) and "normals" the outward
        density gradient there, so that every point lies on one surface whichever way its ray came. The median
        depth of a soft, briefly trained field moves with the view direction: on the demo's model its points lay
        0.08 (median) to 0.18 (99th percentile) off the object's mesh, and Poisson wrapped them in a 4.7 M-face mesh
        of 28 square units for a surface of 3.9. Rays that never cross the level get alpha 0 (`get_rgba_image`), so
        nerfstudio drops them. A field without a surface, or with `surface_depth` off
        (`LRMPipeline.check_display_opacity` turns it off when the level misses most opaque rays), falls back to
        the median depth and rendered normals."""
        triplanes = self.display_triplanes()
        level = self.display_surface_level() if self.surface_depth else None
        if level is None:
            return self.render_triplanes(ray_bundle, triplanes, compute_normals=True)
        outputs = self.render_triplanes(ray_bundle, triplanes, keep_density=True)
        density = outputs.pop("sample_density")[..., 0]  # [N, S]
        samples = outputs["ray_samples_list"][-1]
        above = density >= level
        hit = above.any(dim=-1)
        rays = hit.nonzero()[:, 0]  # only these are refined: the others are dropped
        t = ((samples.frustums.starts + samples.frustums.ends) / 2)[rays, :, 0]  # [H, S]
        k = above[rays].int().argmax(dim=-1, keepdim=True)  # the first sample at or above the level
        t0, t1 = t.gather(-1, (k - 1).clamp_min(0))[:, 0], t.gather(-1, k)[:, 0]
        origins, directions = ray_bundle.origins[rays], ray_bundle.directions[rays]
        # bisection between the last sample below the level and the first above it
        for _ in range(SURFACE_BISECTIONS):
            mid = (t0 + t1) / 2
            below = self.field.density_at((origins + directions * mid[:, None])[None], triplanes)[0, :, 0] < level
            t0, t1 = torch.where(below, mid, t0), torch.where(below, t1, mid)
        depth = (t0 + t1) / 2
        points = (origins + directions * depth[:, None]).detach()
        with torch.enable_grad():
            points.requires_grad_(True)
            sigma = self.field.density_at(points[None], triplanes)[0, :, 0]
            (gradient,) = torch.autograd.grad(sigma.sum(), points)
        normals = torch.zeros_like(ray_bundle.origins)  # a missed ray's: (0.5, 0.5, 0.5) below, never used
        normals[rays] = -gradient / gradient.norm(dim=-1, keepdim=True).clamp_min(1e-12)
        outputs["depth"] = outputs["depth"].clone()
        outputs["depth"][rays] = depth[:, None].to(outputs["depth"].dtype)
        outputs["normals"] = (normals + 1.0) / 2.0
        outputs["surface_hit"] = hit[:, None]
        return outputs

    @torch.no_grad()
    def render_camera(
        self,
        camera: Cameras,
        triplanes: Float[Tensor, "1 3 C R R"] | None = None,
        compute_normals: bool = True,
        background: Float[Tensor, "3"] | None = None,
    ) -> dict[str, Tensor]:
        """Render one full camera view with `triplanes`, or with the display triplane (normals too unless
        `compute_normals` is off, which saves the density-gradient pass), on `background` (default white).

        The one chunked renderer (eval_num_rays_per_chunk rays at a time): the viewer, evaluation, turntables and
        splat distillation targets all render through it."""
        if triplanes is None:
            triplanes = self.display_triplanes()
        bundle = camera.generate_rays(camera_indices=0, keep_shape=True).to(self.device)
        height, width = bundle.origins.shape[:2]
        flat = bundle.flatten()
        chunk = self.config.eval_num_rays_per_chunk
        pieces: dict[str, list[Tensor]] = {}
        for start in range(0, len(flat), chunk):
            part = flat[start : start + chunk]
            if background is not None:
                bg = background.to(self.device).expand(len(part), 3)
                part.metadata = {**(part.metadata or {}), "background_color": bg}
            outputs = self.render_triplanes(part, triplanes, compute_normals=compute_normals)
            for key, value in outputs.items():
                if isinstance(value, Tensor):
                    pieces.setdefault(key, []).append(value)
        return {key: torch.cat(value).view(height, width, -1) for key, value in pieces.items()}

    def get_rgba_image(self, outputs: dict[str, Tensor], output_name: str = "rgb") -> Tensor:
        """RGBA with the real accumulation as alpha, so that exporters drop empty space; 0 where a ray of
        `render_display_surface` missed the surface."""
        accumulation = outputs["accumulation"]
        rgb = outputs["rgb_premultiplied"] / accumulation.clamp(min=1e-6)
        alpha = accumulation * outputs["surface_hit"] if "surface_hit" in outputs else accumulation
        return torch.cat([rgb.clamp(0, 1), alpha], dim=-1)

    # ----------------------------------------------------------------------------------------------- losses/metrics
    def get_metrics_dict(self, outputs: dict[str, Any], batch: dict[str, Any]) -> dict[str, Tensor]:
        image = batch["image"].to(self.device)
        mse = torch.mean((outputs["rgb"].detach() - image) ** 2)
        return {"psnr": -10.0 * torch.log10(mse.clamp(min=1e-10))}

    def get_loss_dict(
        self, outputs: dict[str, Any], batch: dict[str, Any], metrics_dict: dict[str, Tensor] | None = None
    ) -> dict[str, Tensor]:
        cfg = self.config
        image = batch["image"].to(self.device)
        rgb = outputs["rgb"]
        losses: dict[str, Tensor] = {"rgb_loss": cfg.rgb_loss_mult * torch.mean((rgb - image) ** 2)}
        if cfg.lpips_loss_mult > 0 and self.perceptual_loss.available and "patch_hw" in batch:
            h, w = (int(v) for v in batch["patch_hw"])
            to_patches = lambda x: x.reshape(-1, h, w, 3).permute(0, 3, 1, 2)
            lpips = self.perceptual_loss(to_patches(rgb), to_patches(image))
            if lpips is not None:
                losses["lpips_loss"] = cfg.lpips_loss_mult * lpips
        if cfg.mask_loss_mult > 0 and "alpha" in batch:
            alpha = batch["alpha"].to(self.device)
            losses["mask_loss"] = cfg.mask_loss_mult * torch.mean((outputs["accumulation"] - alpha) ** 2)
        if cfg.depth_loss_mult > 0 and "depth" in batch:
            depth = batch["depth"].to(self.device)
            z = outputs["expected_depth"]
            if "directions_norm" in outputs:
                z = z / outputs["directions_norm"]
            valid = (depth > 0) & (batch["alpha"].to(self.device) > 0.5)
            if valid.any():
                losses["depth_loss"] = cfg.depth_loss_mult * torch.abs(z - depth)[valid].mean()
        if cfg.tv_loss_mult > 0 and "triplanes" in outputs:
            losses["tv_loss"] = cfg.tv_loss_mult * triplane_tv_loss(outputs["triplanes"])
        return losses

    @property
    def perceptual_loss(self) -> PerceptualLoss:
        """LPIPS on the model's device."""
        perceptual: PerceptualLoss = self.__dict__["perceptual"]
        if perceptual.available and next(perceptual.parameters()).device != self.device:
            perceptual.to(self.device)
        return perceptual

    def image_metrics(self, rgb: Float[Tensor, "H W 3"], image: Float[Tensor, "H W 3"]) -> dict[str, float]:
        """PSNR, SSIM and (when available) LPIPS of one rendered view (model/metrics.py)."""
        return image_quality(rgb, image, self.perceptual_loss)

    def get_image_metrics_and_images(
        self, outputs: dict[str, Tensor], batch: dict[str, Tensor]
    ) -> tuple[dict[str, float], dict[str, Tensor]]:
        image = batch["image"].to(self.device)
        rgb = outputs["rgb"]
        metrics = self.image_metrics(rgb, image)
        images = {
            "img": torch.cat([image, rgb.clamp(0, 1)], dim=1),
            "accumulation": colormaps.apply_colormap(outputs["accumulation"]),
            "depth": colormaps.apply_depth_colormap(outputs["depth"], accumulation=outputs["accumulation"]),
        }
        if "normals" in outputs:
            images["normals"] = outputs["normals"]
        return metrics, images
