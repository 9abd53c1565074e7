"""Triplane NeRF field: decodes a triplane given as input into density and colour."""

from __future__ import annotations

import os
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Literal

import torch
import torch.nn.functional as F
from jaxtyping import Bool, Float, Int
from nerfstudio.cameras.rays import RaySamples
from nerfstudio.configs.base_config import InstantiateConfig
from nerfstudio.field_components.activations import trunc_exp
from nerfstudio.field_components.field_heads import FieldHeadNames
from nerfstudio.fields.base_field import Field
from torch import Tensor, nn

INFERENCE_CHUNK = 2**18
"""Most points decoded at once without autograd on a GPU (bounds the activations' memory)."""

QUERY_CHUNK = 8192
"""Points per piece of a CPU query without autograd (marching cubes, evaluation and viewer renders). Pieces this
small keep each layer's activations in the core's L2 cache; they go to `query_pool`'s threads, each running its
ops single-threaded. Measured on the 2-core CPU at TripoSR's field sizes (2^18 points), against TripoSR's own loop
(8192-point chunks, torch's two intra-op threads), in one run: 1.01-1.08 M against 0.92-0.97 M points/s idle
(one 2^18 batch, the earlier default: 0.37-0.43 M/s), and 528 against 229-251 k/s with three other processes on
the cores, where intra-op threads wait on each other at every small op. `scripts/benchmark.py` (`field_speed`)
measures it."""

_POOL: tuple[int, int, ThreadPoolExecutor] | None = None  # (process id, workers, pool)
_POOL_LOCK = threading.Lock()
_WORKER = threading.local()


def _single_threaded_worker() -> None:
    # torch's intra-op thread count is per thread once a thread has read it (OpenMP's per-thread ICV, MKL's local
    # setting): read it first, then set this thread's to 1. That also sets torch's process-wide default, which
    # query_pool restores once every worker has started.
    torch.get_num_threads()
    torch.set_num_threads(1)
    _WORKER.active = True


def query_pool() -> ThreadPoolExecutor | None:
    """Threads for CPU field queries, as many as torch's intra-op threads, each running its ops single-threaded;
    None when torch runs one thread. Made once per process (a forked child makes its own: threads do not survive
    fork), and it leaves the calling thread's and new threads' thread counts as they were."""
    global _POOL
    n = torch.get_num_threads()
    if n < 2:
        return None
    with _POOL_LOCK:
        if _POOL is None or _POOL[0] != os.getpid() or _POOL[1] != n:
            pool = ThreadPoolExecutor(n, thread_name_prefix="lrm-field-query", initializer=_single_threaded_worker)
            started = threading.Barrier(n, timeout=60.0)  # all n workers exist (and ran the initializer) ...
            list(pool.map(lambda _: started.wait(), range(n)))
            torch.set_num_threads(n)  # ... before the process-wide default is put back
            _POOL = (os.getpid(), n, pool)
        return _POOL[2]


# Which two world axes index each plane, in grid_sample order (width coordinate first).
PLANE_AXES = ((0, 1), (0, 2), (1, 2))  # XY, XZ, YZ


def sample_triplanes(
    points: Float[Tensor, "B P 3"],
    triplanes: Float[Tensor, "B 3 C Rh Rw"],
    plane_axes: tuple[tuple[int, int], ...] = PLANE_AXES,
) -> Float[Tensor, "B P 3 C"]:
    """Bilinear lookup of each point in the three planes (align_corners=False, zeros outside).

    By default plane XY is indexed by (x, y) with x along the width, XZ by (x, z), YZ by (y, z); `plane_axes`
    names the (width, height) axes of each plane otherwise. Points are in [-1, 1]^3. All objects and planes go
    through one `grid_sample` call (objects and planes folded into its batch).
    """
    b, p, _ = points.shape
    _, three, c, r1, r2 = triplanes.shape
    # filled by slice copies: a list index (points[..., [0, 1]]) is an advanced-indexing gather, ~20x slower on CPU
    grid = points.new_empty(b, len(plane_axes), p, 2)  # [B, 3, P, 2]
    for k, (u, v) in enumerate(plane_axes):
        grid[:, k, :, 0] = points[..., u]
        grid[:, k, :, 1] = points[..., v]
    feats = F.grid_sample(
        triplanes.reshape(b * three, c, r1, r2),
        grid.reshape(b * three, 1, p, 2),
        mode="bilinear",
        padding_mode="zeros",
        align_corners=False,
    )  # [B*3, C, 1, P]
    return feats.view(b, three, c, p).permute(0, 3, 1, 2)


@dataclass
class TriplaneFieldConfig(InstantiateConfig):
    """Configuration for :class:`TriplaneField`."""

    _target: type = field(default_factory=lambda: TriplaneField)
    triplane_dim: int = 80
    """Channels C of each plane (paper: 80)."""
    aggregation: Literal["concat", "sum"] = "concat"
    """How the three plane features are combined before the MLP."""
    hidden_dim: int = 64
    """Width of the MLP's hidden layers (paper: 64)."""
    num_hidden_layers: int = 3
    """Number of hidden layers of the MLP (each Linear + SiLU)."""
    density_activation: Literal["trunc_exp", "softplus"] = "trunc_exp"
    """trunc_exp (as TripoSR/OpenLRM) reaches large densities quickly for sharp surfaces; softplus is gentler."""
    density_bias: float = -1.0
    """Added to the raw density before the activation: a negative bias starts training with a mostly empty box."""
    activation: Literal["silu", "relu"] = "silu"
    """Activation of the MLP's hidden layers (TripoSR: SiLU; OpenLRM: ReLU)."""
    color_activation: Literal["sigmoid", "widened_sigmoid"] = "sigmoid"
    """sigmoid, or MipNeRF's widened sigmoid `sigmoid(x) * 1.002 - 0.001` (OpenLRM)."""
    plane_axes: tuple[tuple[int, int], tuple[int, int], tuple[int, int]] = PLANE_AXES
    """(width, height) axes, in the triplane's own frame, of each plane (`sample_triplanes`); OpenLRM's third
    plane is (z, y): ((0, 1), (0, 2), (2, 1))."""
    box_radius: float = 1.0
    """Half-side of the cube the triplane spans, in the triplane's own frame (TripoSR: 0.87). Density is zero
    outside it."""
    frame_axes: tuple[int, int, int] = (0, 1, 2)
    """Triplane-frame coordinate i is `frame_signs[i] * p[frame_axes[i]]` of a project-frame point p (+Z up, the
    canonical source camera on -Y). TripoSR's frame: (1, 0, 2) with signs (-1, 1, 1), i.e. its point (x, y, z) is
    the project's (y, -x, z)."""
    frame_signs: tuple[float, float, float] = (1.0, 1.0, 1.0)
    """Signs of the frame mapping (see `frame_axes`)."""
    normals_create_graph: bool = False
    """Keep the graph of the normals so that a loss on them reaches the weights (only needed for a normal loss)."""


class TriplaneField(Field):
    """NeRF decoder of LRM (Hong et al. 2023, §3.3 "Triplane-NeRF").

    Samples the three planes bilinearly at each point, aggregates the features and maps them with an MLP to
    density and RGB (no view dependence, as in the paper). The triplane is an input of `forward` rather than a
    parameter, so one field decodes every object in a batch (pytorch3d's `volumetric_function` idea).
    Points outside the [-1, 1]^3 box have zero density.
    """

    def __init__(self, config: TriplaneFieldConfig) -> None:
        super().__init__()
        self.config = config
        in_dim = config.triplane_dim * (3 if config.aggregation == "concat" else 1)
        layers: list[nn.Module] = []
        act = nn.SiLU if config.activation == "silu" else nn.ReLU
        for i in range(config.num_hidden_layers):
            # SiLU by default rather than ReLU: a smooth MLP gives smooth density gradients, hence usable normals.
            layers += [nn.Linear(in_dim if i == 0 else config.hidden_dim, config.hidden_dim), act()]
        layers.append(nn.Linear(config.hidden_dim if config.num_hidden_layers > 0 else in_dim, 4))
        self.mlp = nn.Sequential(*layers)

    # --- building blocks -------------------------------------------------------------------------------------
    def to_plane_coordinates(self, points: Float[Tensor, "B P 3"]) -> Float[Tensor, "B P 3"]:
        """Project-frame points -> the triplane's frame, scaled so that its box is [-1, 1]^3."""
        c = self.config
        if c.frame_axes != (0, 1, 2):
            points = points[..., list(c.frame_axes)]
        if c.frame_signs != (1.0, 1.0, 1.0):
            points = points * points.new_tensor(c.frame_signs)
        return points / c.box_radius if c.box_radius != 1.0 else points

    def _features(self, points: Float[Tensor, "B P 3"], triplanes: Float[Tensor, "B 3 C R R"]) -> Tensor:
        feats = sample_triplanes(points, triplanes, plane_axes=self.config.plane_axes)
        if self.config.aggregation == "concat":
            return feats.flatten(-2)
        return feats.sum(dim=-2)

    def _decode(
        self, points: Float[Tensor, "B P 3"], triplanes: Float[Tensor, "B 3 C R R"]
    ) -> tuple[Float[Tensor, "B P 1"], Float[Tensor, "B P 3"], Bool[Tensor, "B P 1"]]:
        """Raw density (before bias/activation), RGB, and the inside-the-box mask."""
        b, p, _ = points.shape
        if not torch.is_grad_enabled():  # with autograd the graph stays one piece
            chunk = max(1, QUERY_CHUNK // b) if points.device.type == "cpu" else INFERENCE_CHUNK
            if p > chunk:
                return self._decode_pieces(points, triplanes, chunk)
        return self._decode_piece(points, triplanes)

    def _decode_pieces(
        self, points: Float[Tensor, "B P 3"], triplanes: Float[Tensor, "B 3 C R R"], chunk: int
    ) -> tuple[Tensor, Tensor, Tensor]:
        """`_decode` without autograd, `chunk` points of each object at a time (on `query_pool`'s threads on a CPU)."""

        def piece(start: int) -> tuple[Tensor, Tensor, Tensor]:
            with torch.no_grad():  # grad mode is per thread: the pool's threads start with it on
                return self._decode_piece(points[:, start : start + chunk], triplanes)

        starts = range(0, points.shape[1], chunk)
        # never from a pool thread into its own pool: with every worker waiting on pieces, none would run them
        pool = query_pool() if points.device.type == "cpu" and not getattr(_WORKER, "active", False) else None
        parts = list(pool.map(piece, starts)) if pool is not None else [piece(start) for start in starts]
        return tuple(torch.cat(t, dim=1) for t in zip(*parts))  # type: ignore[return-value]

    def _decode_piece(
        self, points: Float[Tensor, "B P 3"], triplanes: Float[Tensor, "B 3 C R R"]
    ) -> tuple[Float[Tensor, "B P 1"], Float[Tensor, "B P 3"], Bool[Tensor, "B P 1"]]:
        points = self.to_plane_coordinates(points)
        raw = self.run_mlp(self._features(points, triplanes))
        inside = (points.abs() <= 1.0).all(dim=-1, keepdim=True)
        rgb = torch.sigmoid(raw[..., 1:])
        if self.config.color_activation == "widened_sigmoid":
            rgb = rgb * (1 + 2 * 0.001) - 0.001
        return raw[..., :1], rgb, inside

    def run_mlp(self, features: Float[Tensor, "*batch D"]) -> Float[Tensor, "*batch 4"]:
        """`self.mlp(features)`; without autograd its SiLUs / ReLUs run in place (same values, about a quarter faster on a
        CPU: the profile of a query is dominated by SiLU and by allocating each layer's output)."""
        tracked = torch.is_grad_enabled() and (
            features.requires_grad or any(p.requires_grad for p in self.mlp.parameters())
        )
        if tracked or not isinstance(self.mlp, nn.Sequential):
            return self.mlp(features)
        x = features
        for i, layer in enumerate(self.mlp):
            # in place only on a layer's own fresh output, never on the caller's features
            if isinstance(layer, nn.SiLU) and i > 0:
                x = F.silu(x, inplace=True)
            elif isinstance(layer, nn.ReLU) and i > 0:
                x = F.relu(x, inplace=True)
            else:
                x = layer(x)
        return x

    def _activate(self, raw_density: Tensor, inside: Tensor) -> Tensor:
        x = raw_density + self.config.density_bias
        density = trunc_exp(x) if self.config.density_activation == "trunc_exp" else F.softplus(x)
        return density * inside.to(density.dtype)

    def _decode_rays(
        self,
        positions: Float[Tensor, "N S 3"],
        triplanes: Float[Tensor, "B 3 C R R"],
        object_index: Int[Tensor, "N 1"] | None,
    ) -> tuple[Tensor, Tensor, Tensor]:
        """Decode ray samples, each ray using its object's triplane."""
        n, s, _ = positions.shape
        b = triplanes.shape[0]
        if object_index is None or b == 1:
            if object_index is not None and n > 0 and int(object_index.max()) != 0:
                raise ValueError(f"object_index refers to object {int(object_index.max())} but only 1 triplane given")
            out = self._decode(positions.reshape(1, n * s, 3), triplanes[:1])
            return tuple(t.view(n, s, -1) for t in out)  # type: ignore[return-value]
        idx = object_index.view(n)
        per = n // b
        # Fast path: rays come object-major with equal counts ([B, M, h, w] layout), so one batched lookup.
        if per * b == n and torch.equal(idx.view(b, per), torch.arange(b, device=idx.device).view(b, 1).expand(b, per)):
            out = self._decode(positions.reshape(b, per * s, 3), triplanes)
            return tuple(t.reshape(n, s, -1) for t in out)  # type: ignore[return-value]
        return self._decode_grouped(positions, triplanes, idx)

    def _decode_grouped(
        self, positions: Float[Tensor, "N S 3"], triplanes: Float[Tensor, "B 3 C R R"], idx: Int[Tensor, " N"]
    ) -> tuple[Tensor, Tensor, Tensor]:
        """General path: any order and any count of rays per object; one lookup per object present."""
        n, s, _ = positions.shape
        if n > 0 and (int(idx.min()) < 0 or int(idx.max()) >= triplanes.shape[0]):
            raise ValueError(f"object_index out of range [0, {triplanes.shape[0]}): {int(idx.min())}..{int(idx.max())}")
        raw = positions.new_zeros(n, s, 1)
        rgb = positions.new_zeros(n, s, 3)
        inside = torch.zeros(n, s, 1, dtype=torch.bool, device=positions.device)
        for obj in torch.unique(idx).tolist():
            rows = (idx == obj).nonzero(as_tuple=True)[0]
            r, c, m = self._decode(positions[rows].reshape(1, -1, 3), triplanes[obj : obj + 1])
            raw = raw.index_put((rows,), r.view(-1, s, 1))
            rgb = rgb.index_put((rows,), c.view(-1, s, 3))
            inside = inside.index_put((rows,), m.view(-1, s, 1))
        return raw, rgb, inside

    # --- public API -------------------------------------------------------------------------------------------
    def forward(  # type: ignore[override]
        self,
        ray_samples: RaySamples,
        triplanes: Float[Tensor, "B 3 C R R"],
        object_index: Int[Tensor, "N 1"] | None = None,
        compute_normals: bool = False,
    ) -> dict[FieldHeadNames, Tensor]:
        """Density, RGB (and normals) of ray samples.

        Args:
            ray_samples: samples of N rays, S per ray, in the project's frame (the [-1, 1]^3 scene box).
            triplanes: one triplane per object.
            object_index: which triplane each ray uses; None means all rays use object 0.
            compute_normals: also return `FieldHeadNames.NORMALS`, the normalised negative density gradient. It
                works under `torch.no_grad()` too (gradients are enabled locally).

        Returns:
            `FieldHeadNames.DENSITY` [N, S, 1], `FieldHeadNames.RGB` [N, S, 3] and, if asked, `NORMALS` [N, S, 3].
        """
        positions = ray_samples.frustums.get_positions()
        if positions.dim() != 3:
            raise ValueError(f"TriplaneField expects ray samples shaped [N, S], got positions {tuple(positions.shape)}")
        if not compute_normals:
            raw, rgb, inside = self._decode_rays(positions, triplanes, object_index)
            return {FieldHeadNames.DENSITY: self._activate(raw, inside), FieldHeadNames.RGB: rgb}

        outer_grad = torch.is_grad_enabled()
        with torch.enable_grad():
            points = positions if positions.requires_grad else positions.detach().requires_grad_(True)
            raw, rgb, inside = self._decode_rays(points, triplanes, object_index)
            create_graph = self.config.normals_create_graph and outer_grad
            grad = torch.autograd.grad(raw, points, torch.ones_like(raw), create_graph=create_graph, retain_graph=True)
        normals = -F.normalize(grad[0], dim=-1)
        if not create_graph:
            normals = normals.detach()
        density = self._activate(raw, inside)
        if not outer_grad:  # the caller asked for no graph: do not hand one back
            density, rgb = density.detach(), rgb.detach()
        return {FieldHeadNames.DENSITY: density, FieldHeadNames.RGB: rgb, FieldHeadNames.NORMALS: normals}

    def decode_samples(
        self,
        positions: Float[Tensor, "N S 3"],
        triplanes: Float[Tensor, "B 3 C R R"],
        object_index: Int[Tensor, "N 1"] | None = None,
    ) -> tuple[Float[Tensor, "N S 1"], Float[Tensor, "N S 3"], Bool[Tensor, "N S 1"]]:
        """Raw density (before bias and activation), RGB and the inside-the-box mask of ray sample positions."""
        return self._decode_rays(positions, triplanes, object_index)  # type: ignore[return-value]

    def activate_density(self, raw: Float[Tensor, "*bs 1"], inside: Bool[Tensor, "*bs 1"]) -> Float[Tensor, "*bs 1"]:
        """Density from raw values: bias, activation, zero outside the box."""
        return self._activate(raw, inside)

    def rgb_density_at(
        self, points: Float[Tensor, "B P 3"], triplanes: Float[Tensor, "B 3 C R R"]
    ) -> tuple[Float[Tensor, "B P 3"], Float[Tensor, "B P 1"]]:
        """RGB and density at arbitrary points (for marching cubes and vertex colours)."""
        raw, rgb, inside = self._decode(points, triplanes)
        return rgb, self._activate(raw, inside)

    def density_at(
        self, points: Float[Tensor, "B P 3"], triplanes: Float[Tensor, "B 3 C R R"]
    ) -> Float[Tensor, "B P 1"]:
        """Density at arbitrary points (for marching cubes)."""
        return self.rgb_density_at(points, triplanes)[1]

    # nerfstudio's Field API evaluates without a triplane; this field always needs one.
    def get_density(self, ray_samples: RaySamples):  # type: ignore[override]
        raise TypeError("TriplaneField decodes a triplane given as input: call forward(ray_samples, triplanes, ...)")

    def get_outputs(self, ray_samples: RaySamples, density_embedding=None):  # type: ignore[override]
        raise TypeError("TriplaneField decodes a triplane given as input: call forward(ray_samples, triplanes, ...)")
