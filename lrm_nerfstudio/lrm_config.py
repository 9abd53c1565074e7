"""nerfstudio method specifications: `lrm` (paper scale), `lrm-tiny` (learns on 2 CPU cores), `lrm-demo` (the
recipe `lrm-demo` trains: lrm-tiny narrowed for ten CPU minutes), and the released models' architectures for
fine-tuning, `lrm-triposr` and `lrm-openlrm` (start them from imported weights with
`--pipeline.model.init-from FILE`)."""

from __future__ import annotations

from copy import deepcopy

import torch
from nerfstudio.configs.base_config import MachineConfig, ViewerConfig
from nerfstudio.engine.schedulers import CosineDecaySchedulerConfig
from nerfstudio.plugins.types import MethodSpecification

from lrm_nerfstudio.convert import openlrm, triposr
from lrm_nerfstudio.data.lrm_datamanager import LRMDataManagerConfig
from lrm_nerfstudio.data.lrm_dataparser import LRMDataParserConfig
from lrm_nerfstudio.lrm_pipeline import LRMPipelineConfig
from lrm_nerfstudio.model.camera_embedder import CameraEmbedderConfig
from lrm_nerfstudio.model.encoder import ImageEncoderConfig
from lrm_nerfstudio.model.lrm_model import LRMModelConfig
from lrm_nerfstudio.model.processor import ProcessorConfig
from lrm_nerfstudio.model.triplane_field import TriplaneFieldConfig
from lrm_nerfstudio.model.triplane_transformer import TriplaneTransformerConfig
from lrm_nerfstudio.model.upsampler import TriplaneUpsamplerConfig
from lrm_nerfstudio.optimizers import AdamWOptimizerConfig
from lrm_nerfstudio.training.trainer import LRMTrainerConfig
from lrm_nerfstudio.viewer_security import install_viewer_guards

# nerfstudio discovers the plugin by importing this module, before `ns-viewer` declares its viewer options
install_viewer_guards()


def _machine() -> MachineConfig:
    # nerfstudio defaults to CUDA; on a machine without one, `ns-train lrm-tiny --data ...` should just run.
    return MachineConfig(device_type="cuda" if torch.cuda.is_available() else "cpu")


def _optimizers(encoder_lr: float, decoder_lr: float, warmup: int, max_steps: int) -> dict:
    def group(lr: float) -> dict:
        return {
            "optimizer": AdamWOptimizerConfig(lr=lr, weight_decay=0.05, max_norm=1.0),
            "scheduler": CosineDecaySchedulerConfig(warm_up_end=warmup, learning_rate_alpha=0.05, max_steps=max_steps),
        }

    return {"encoder": group(encoder_lr), "decoder": group(decoder_lr)}


LRM_STEPS = 100_000
lrm_method = MethodSpecification(
    config=LRMTrainerConfig(
        method_name="lrm",
        steps_per_eval_batch=1000,
        steps_per_eval_image=1000,
        steps_per_eval_all_images=20_000,
        steps_per_save=2000,
        max_num_iterations=LRM_STEPS,
        mixed_precision=False,  # the model autocasts its transformer to bf16 on CUDA itself (no grad scaler needed)
        pipeline=LRMPipelineConfig(
            datamanager=LRMDataManagerConfig(
                dataparser=LRMDataParserConfig(),
                objects_per_batch=8,
                target_views_per_object=4,
                patch_size=128,
                render_resolution_range=(128, 384),
            ),
            # coarse to fine, minimum render resolution 64 -> 128 -> 256; a checkpoint reloads with its step's stage
            progressive=(
                (0, 64, 64, 128, 48, 48),
                (20_000, 128, 128, 256, 64, 64),
                (60_000, 128, 256, 384, 64, 64),
            ),
            model=LRMModelConfig(
                processor=ProcessorConfig(resolution=512),
                encoder=ImageEncoderConfig(
                    pretrained="facebook/dino-vitb16",
                    architecture="vit",
                    image_size=512,
                    patch_size=16,
                    hidden_size=768,
                    num_layers=12,
                    num_heads=12,
                ),
                camera_embedder=CameraEmbedderConfig(embed_dim=1024),
                transformer=TriplaneTransformerConfig(triplane_low_res=32, inner_dim=1024, num_layers=16, num_heads=16),
                upsampler=TriplaneUpsamplerConfig(out_dim=80),
                field=TriplaneFieldConfig(hidden_dim=64, num_hidden_layers=3),
                num_coarse_samples=64,
                num_importance_samples=64,
                eval_num_rays_per_chunk=1 << 14,
            ),
        ),
        optimizers=_optimizers(encoder_lr=4e-5, decoder_lr=4e-4, warmup=3000, max_steps=LRM_STEPS),
        viewer=ViewerConfig(websocket_host="127.0.0.1", num_rays_per_chunk=1 << 14),
        vis="viewer",
        machine=_machine(),
    ),
    description="LRM (Hong et al. 2023): DINO ViT-B/16 encoder, 16x1024 triplane transformer, 64^2x80 triplane NeRF.",
)

TINY_STEPS = 3000
lrm_tiny_method = MethodSpecification(
    config=LRMTrainerConfig(
        method_name="lrm-tiny",
        steps_per_eval_batch=100,
        steps_per_eval_image=250,
        steps_per_eval_all_images=100_000,
        steps_per_save=250,
        max_num_iterations=TINY_STEPS,
        mixed_precision=False,
        pipeline=LRMPipelineConfig(
            datamanager=LRMDataManagerConfig(
                dataparser=LRMDataParserConfig(),
                objects_per_batch=4,
                target_views_per_object=4,
                patch_size=32,
                render_resolution_range=(32, 64),
            ),
            model=LRMModelConfig(
                processor=ProcessorConfig(resolution=64),
                encoder=ImageEncoderConfig(
                    pretrained=None,
                    architecture="vit",
                    image_size=64,
                    patch_size=8,
                    hidden_size=128,
                    num_layers=3,
                    num_heads=4,
                ),
                camera_embedder=CameraEmbedderConfig(embed_dim=256),
                # image_lift: a from-scratch decoder this small would otherwise spend its CPU hours learning which
                # image patch each texel sees (README: "What 2 CPU cores buy")
                transformer=TriplaneTransformerConfig(
                    triplane_low_res=16, inner_dim=256, num_layers=3, num_heads=4, image_lift=True
                ),
                upsampler=TriplaneUpsamplerConfig(out_dim=16),
                # density bias -4 (paper-scale lrm: -1, as TripoSR): the box starts almost empty (a ray through it
                # about 3 % opaque instead of half), which lifted held-out PSNR and mask IoU at equal steps
                # (experiments/TRAINING.md)
                field=TriplaneFieldConfig(hidden_dim=64, num_hidden_layers=2, density_bias=-4.0),
                num_coarse_samples=16,
                num_importance_samples=16,
                eval_num_rays_per_chunk=1 << 13,
            ),
        ),
        optimizers=_optimizers(encoder_lr=3e-4, decoder_lr=1e-3, warmup=100, max_steps=TINY_STEPS),
        viewer=ViewerConfig(websocket_host="127.0.0.1", num_rays_per_chunk=1 << 13),
        vis="viewer",
        machine=_machine(),
    ),
    description="LRM sized for 2 CPU cores: from-scratch 64^2 ViT, 3x256 triplane transformer, 32^2x16 triplane.",
)


DEMO_STEPS = 1200


def _demo_config() -> LRMTrainerConfig:
    """lrm-tiny with the recipe adopted for `lrm-demo` (experiments/TRAINING.md measures each choice)."""
    config = deepcopy(lrm_tiny_method.config)
    config.method_name = "lrm-demo"
    config.max_num_iterations = DEMO_STEPS
    config.optimizers = _optimizers(encoder_lr=3e-4, decoder_lr=1e-3, warmup=100, max_steps=DEMO_STEPS)
    config.pipeline.eval_max_objects = 64  # a bounded evaluation: 64 held-out objects, every view but the source
    dm = config.pipeline.datamanager
    # 16 objects x 1 view a step has the rays of 4 x 4, spread over 4x more objects: it generalises better
    dm.objects_per_batch = 16
    dm.target_views_per_object = 1
    # 16^2 rays on every 4th pixel of a whole 64^2 view: sharp targets, the whole object each time
    dm.patch_size = 16
    dm.patch_sampling = "stride"
    dm.render_resolution_range = (16, 24)  # only read by patch_sampling "resize"
    dm.eval_resolution = 64  # the demo data's own resolution
    transformer = config.pipeline.model.transformer
    # 8^2 token planes (4x fewer tokens than lrm-tiny) and width 128: 4-5x more steps in the same minutes, and
    # room for 16 encoder passes a step
    transformer.triplane_low_res = 8
    transformer.inner_dim = 128
    return config


lrm_demo_method = MethodSpecification(
    config=_demo_config(),
    description="lrm-tiny narrowed for ten CPU minutes (lrm-demo's recipe): 3x128 transformer on 8^2 token planes, "
    "16 objects x 1 view x 16^2 strided rays a step.",
)


FINETUNE_STEPS = 5000


def _finetune_method(name: str, model: LRMModelConfig, datamanager: LRMDataManagerConfig, description: str):
    model.eval_num_rays_per_chunk = 1 << 13
    return MethodSpecification(
        config=LRMTrainerConfig(
            method_name=name,
            steps_per_eval_batch=250,
            steps_per_eval_image=500,
            steps_per_eval_all_images=100_000,
            steps_per_save=500,
            max_num_iterations=FINETUNE_STEPS,
            mixed_precision=False,
            pipeline=LRMPipelineConfig(datamanager=datamanager, model=model),
            # fine-tuning: a tenth of the from-scratch learning rates, short warm-up
            optimizers=_optimizers(encoder_lr=4e-6, decoder_lr=4e-5, warmup=100, max_steps=FINETUNE_STEPS),
            viewer=ViewerConfig(websocket_host="127.0.0.1", num_rays_per_chunk=1 << 13),
            vis="viewer",
            machine=_machine(),
        ),
        description=description,
    )


def _openlrm_base() -> LRMModelConfig:
    config = dict(openlrm.RELEASED_CONFIGS["base"])
    config["encoder"] = {**openlrm.ENCODER_DEFAULTS, **openlrm.ENCODERS[config["encoder_model_name"]]}
    return openlrm.model_config(config, "openlrm-base")


def _finetune_datamanager() -> LRMDataManagerConfig:
    """A fine-tuning datamanager (the model config brings the released model's processor)."""
    return LRMDataManagerConfig(
        dataparser=LRMDataParserConfig(),
        objects_per_batch=2,
        target_views_per_object=4,
        patch_size=64,
        render_resolution_range=(64, 256),
    )


lrm_triposr_method = _finetune_method(
    "lrm-triposr",
    triposr.model_config({**triposr.RELEASED_CONFIG, "dino": triposr.DINO_VITB16}, "TripoSR"),
    _finetune_datamanager(),
    "TripoSR's architecture (stabilityai/TripoSR, MIT) for fine-tuning: --pipeline.model.init-from an "
    "lrm-import-weights file.",
)

lrm_openlrm_method = _finetune_method(
    "lrm-openlrm",
    _openlrm_base(),
    _finetune_datamanager(),
    "OpenLRM v1.1's architecture (base; weights CC BY-NC 4.0) for fine-tuning: --pipeline.model.init-from an "
    "lrm-import-weights file of any size (its architecture is used).",
)
