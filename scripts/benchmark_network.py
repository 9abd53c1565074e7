"""Benchmark the network pieces on this machine; prints JSON to stdout.

For each candidate size: parameter counts per module, the TriplaneTransformer's achieved matmul GFLOP/s (FLOPs of
its Linear and attention matmuls counted analytically) forward and forward+backward, next to this machine's fp32
matmul peak measured in the same run, and the time of a full training step (encoder -> transformer -> upsampler ->
field -> volume rendering -> MSE -> backward) on `objects x views x patch^2` rays.

    uv run python scripts/benchmark_network.py --threads 2
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass

import torch
import tyro
from nerfstudio.cameras.rays import RayBundle
from nerfstudio.field_components.field_heads import FieldHeadNames
from nerfstudio.model_components.ray_samplers import UniformSampler

from lrm_nerfstudio.cameras import canonical_source_camera
from lrm_nerfstudio.model.camera_embedder import CameraEmbedderConfig
from lrm_nerfstudio.model.encoder import ImageEncoderConfig
from lrm_nerfstudio.model.triplane_field import TriplaneFieldConfig
from lrm_nerfstudio.model.triplane_transformer import TriplaneTransformerConfig
from lrm_nerfstudio.model.upsampler import TriplaneUpsamplerConfig

# name: (token side n, inner_dim, layers, heads, encoder hidden, encoder layers, triplane channels)
CANDIDATES = {
    "n8-d128-l4": (8, 128, 4, 4, 128, 4, 32),
    "n8-d256-l4": (8, 256, 4, 4, 128, 4, 32),
    "n16-d128-l4": (16, 128, 4, 4, 128, 4, 32),
    "n16-d256-l4": (16, 256, 4, 4, 192, 4, 32),
    "n16-d256-l2": (16, 256, 2, 4, 128, 2, 16),
}


@dataclass
class BenchmarkConfig:
    """What to measure."""

    candidates: tuple[str, ...] = tuple(CANDIDATES)
    """Candidate sizes to measure (keys of CANDIDATES)."""
    threads: int = 2
    """torch intra-op threads."""
    objects: int = 4
    """Objects per training step."""
    views: int = 4
    """Target views per object."""
    patch: int = 32
    """Side of the supervised patch per view (rays per view = patch^2)."""
    samples: int = 48
    """Samples per ray."""
    image_size: int = 64
    """Encoder input resolution."""
    patch_size: int = 8
    """Encoder patch size."""
    repeats: int = 3
    """Timed repetitions (the minimum is reported: the machine is shared)."""


def _best(fn, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def matmul_peak(repeats: int) -> float:
    """fp32 GFLOP/s of a 2048^2 torch.mm loop."""
    a, b = torch.randn(2048, 2048), torch.randn(2048, 2048)
    secs = _best(lambda: [torch.mm(a, b) for _ in range(4)], repeats)
    return 4 * 2 * 2048**3 / secs / 1e9


def _params(m: torch.nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


def measure(name: str, cfg: BenchmarkConfig) -> dict:
    n, dim, layers, heads, enc_dim, enc_layers, channels = CANDIDATES[name]
    enc = ImageEncoderConfig(
        image_size=cfg.image_size,
        patch_size=cfg.patch_size,
        hidden_size=enc_dim,
        num_layers=enc_layers,
        num_heads=max(1, enc_dim // 64),
    ).setup()
    cam = CameraEmbedderConfig(embed_dim=dim).setup()
    tr = TriplaneTransformerConfig(
        triplane_low_res=n, inner_dim=dim, num_layers=layers, num_heads=heads, cond_dim=enc.out_dim, mod_dim=dim
    ).setup()
    up = TriplaneUpsamplerConfig(in_dim=dim, out_dim=channels).setup()
    field = TriplaneFieldConfig(triplane_dim=channels).setup()
    b = cfg.objects
    images = torch.rand(b, 3, cfg.image_size, cfg.image_size)
    cameras = canonical_source_camera().expand(b, 16).clone()

    with torch.no_grad():
        tokens = enc(images)
        emb = cam(cameras)
    flops = tr.matmul_flops(b, tokens.shape[1])
    with torch.no_grad():
        t_fwd = _best(lambda: tr(tokens, emb), cfg.repeats)

    def fwd_bwd():
        tr.zero_grad(set_to_none=True)
        tr(tokens, emb).square().mean().backward()

    t_fb = _best(fwd_bwd, cfg.repeats)

    rays = b * cfg.views * cfg.patch**2
    origins = torch.randn(rays, 3) * 0.3 + torch.tensor([0.0, -2.0, 0.0])
    bundle = RayBundle(
        origins=origins,
        directions=torch.nn.functional.normalize(torch.randn(rays, 3) * 0.1 + torch.tensor([0.0, 1.0, 0.0]), dim=-1),
        pixel_area=torch.ones(rays, 1),
        nears=torch.full((rays, 1), 1.0),
        fars=torch.full((rays, 1), 3.0),
    )
    object_index = torch.arange(b).repeat_interleave(rays // b).view(rays, 1)
    sampler = UniformSampler(num_samples=cfg.samples)
    target = torch.rand(rays, 3)
    modules = torch.nn.ModuleList([enc, cam, tr, up, field])
    split = {}

    def step():
        modules.zero_grad(set_to_none=True)
        t0 = time.perf_counter()
        triplanes = up(tr(enc(images), cam(cameras)))
        t1 = time.perf_counter()
        samples = sampler(bundle)
        out = field(samples, triplanes, object_index)
        weights = samples.get_weights(out[FieldHeadNames.DENSITY])
        rgb = (weights * out[FieldHeadNames.RGB]).sum(-2)
        loss = ((rgb - target) ** 2).mean()
        t2 = time.perf_counter()
        loss.backward()
        split.update(predict_fwd_s=t1 - t0, render_fwd_s=t2 - t1, backward_s=time.perf_counter() - t2)

    t_step = _best(step, max(1, cfg.repeats - 1))
    return {
        "sizes": {
            "tokens": f"3x{n}x{n}",
            "inner_dim": dim,
            "layers": layers,
            "heads": heads,
            "encoder": f"{cfg.image_size}px/p{cfg.patch_size} {enc_layers}x{enc_dim}",
            "triplane": f"3x{channels}x{2 * n}x{2 * n}",
        },
        "params": {
            "encoder": _params(enc),
            "camera_embedder": _params(cam),
            "triplane_transformer": _params(tr),
            "upsampler": _params(up),
            "field": _params(field),
            "total": _params(modules),
        },
        "transformer": {
            "matmul_gflop_fwd": flops / 1e9,
            "fwd_s": t_fwd,
            "fwd_gflops": flops / t_fwd / 1e9,
            "fwd_bwd_s": t_fb,
            "fwd_bwd_gflops": 3 * flops / t_fb / 1e9,  # backward = 2x forward matmul FLOPs
        },
        "train_step": {"rays": rays, "samples_per_ray": cfg.samples, "total_s": t_step, **split},
    }


def main(cfg: BenchmarkConfig) -> None:
    torch.set_num_threads(cfg.threads)
    torch.manual_seed(0)
    peak_before = matmul_peak(cfg.repeats)
    results = {name: measure(name, cfg) for name in cfg.candidates}
    peak_after = matmul_peak(cfg.repeats)
    peak = max(peak_before, peak_after)
    for r in results.values():
        r["transformer"]["fwd_pct_of_peak"] = 100 * r["transformer"]["fwd_gflops"] / peak
        r["transformer"]["fwd_bwd_pct_of_peak"] = 100 * r["transformer"]["fwd_bwd_gflops"] / peak
    report = {
        "threads": cfg.threads,
        "torch": torch.__version__,
        "fp32_matmul_peak_gflops": peak,
        "fp32_matmul_peak_before_after": [peak_before, peak_after],
        "candidates": results,
    }
    print(json.dumps(report, indent=2))


def entrypoint() -> None:
    """Command-line entry point."""
    main(tyro.cli(BenchmarkConfig))


if __name__ == "__main__":
    entrypoint()
