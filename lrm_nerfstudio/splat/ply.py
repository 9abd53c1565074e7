"""The standard 3D Gaussian Splatting PLY (the Inria layout that SuperSplat, nerfstudio and three.js viewers read).

One `vertex` element, binary little-endian, every property float32, in this order:
    x, y, z                     centre
    nx, ny, nz                  normal (3DGS writes zeros; here the surface normal)
    f_dc_0, f_dc_1, f_dc_2      SH DC coefficient per channel (colour = 0.5 + C0 * f_dc)
    f_rest_0 ...                higher SH bands, channel-major: all of R's coefficients, then G's, then B's
    opacity                     logit of the peak opacity
    scale_0, scale_1, scale_2   natural logs of the standard deviations
    rot_0, rot_1, rot_2, rot_3  quaternion w, x, y, z
Coordinates are the project's world (+Z up), as nerfstudio's own `ns-export gaussian-splat` writes them.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from plyfile import PlyData, PlyElement

from lrm_nerfstudio.io.atomic import atomic_path
from lrm_nerfstudio.splat.gaussians import EmptyReconstructionError, Gaussians


def ply_property_names(sh_degree: int) -> list[str]:
    """The vertex properties of a 3DGS PLY of SH degree `sh_degree`, in file order."""
    rest = 3 * ((sh_degree + 1) ** 2 - 1)
    return [
        *("x", "y", "z", "nx", "ny", "nz", "f_dc_0", "f_dc_1", "f_dc_2"),
        *(f"f_rest_{i}" for i in range(rest)),
        "opacity",
        *(f"scale_{i}" for i in range(3)),
        *(f"rot_{i}" for i in range(4)),
    ]


def gaussians_to_array(gaussians: Gaussians) -> np.ndarray:
    """The Gaussians as the structured float32 array of the PLY's vertex element."""
    n, k = len(gaussians), gaussians.sh.shape[1]
    g = gaussians.detach().to("cpu")
    rest = g.sh[:, 1:].transpose(1, 2).reshape(n, 3 * (k - 1))  # [N, 3, K-1]: channel-major, as Inria writes it
    columns = torch.cat(
        [g.means, g.normals, g.sh[:, 0], rest, g.opacity_logits[:, None], g.log_scales, g.quats], dim=1
    ).float()
    names = ply_property_names(g.sh_degree)
    assert columns.shape[1] == len(names)
    array = np.empty(n, dtype=[(name, "<f4") for name in names])
    values = columns.numpy()
    for i, name in enumerate(names):
        array[name] = values[:, i]
    return array


def write_gaussians_ply(path: str | Path, gaussians: Gaussians) -> Path:
    """Write `gaussians` as a standard 3DGS PLY, atomically (written beside `path`, then renamed).

    Gaussians with a non-finite parameter are dropped, as `ns-export gaussian-splat` does.

    Raises:
        EmptyReconstructionError: nothing (finite) to write: a PLY of zero Gaussians breaks splat viewers.
    """
    path = Path(path)
    finite = torch.ones(len(gaussians), dtype=torch.bool, device=gaussians.means.device)
    for name in ("means", "quats", "log_scales", "sh", "normals"):
        finite &= torch.isfinite(getattr(gaussians, name)).flatten(1).all(dim=1)
    finite &= torch.isfinite(gaussians.opacity_logits)
    gaussians = gaussians.select(finite)
    if len(gaussians) == 0:
        raise EmptyReconstructionError(f"{path}: empty reconstruction, no Gaussians to write (no file written)")
    element = PlyElement.describe(gaussians_to_array(gaussians), "vertex")
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        PlyData([element], text=False, byte_order="<", comments=["lrm-nerfstudio 3D Gaussians, +Z up"]).write(tmp)
    return path


def read_gaussians_ply(path: str | Path) -> Gaussians:
    """Read a standard 3DGS PLY (any SH degree 0-3); quaternions are normalised as renderers do.

    Raises:
        ValueError: the file is missing, not a PLY, or lacks the 3DGS properties; the message starts with the path.
    """
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{path}: Gaussian PLY not found")
    try:
        ply = PlyData.read(str(path))
    except Exception as err:  # plyfile raises several types for a malformed header or body
        raise ValueError(f"{path}: not a readable PLY file ({type(err).__name__}: {err})") from err
    if "vertex" not in ply:
        raise ValueError(f"{path}: no 'vertex' element, so not a 3DGS PLY")
    vertex = ply["vertex"].data
    names = set(vertex.dtype.names or ())
    rest = sorted((n for n in names if n.startswith("f_rest_")), key=lambda n: int(n.split("_")[-1]))
    k = 1 + len(rest) // 3
    degree = round(k**0.5) - 1
    if len(rest) % 3 or (degree + 1) ** 2 != k:
        raise ValueError(f"{path}: {len(rest)} f_rest_* properties is not 3 * ((degree + 1)^2 - 1)")
    missing = [n for n in ply_property_names(degree) if n not in names and n not in ("nx", "ny", "nz")]
    if missing:
        raise ValueError(f"{path}: not a 3DGS PLY, missing properties {', '.join(missing)}")
    if len(vertex) == 0:
        raise ValueError(f"{path}: the PLY holds no Gaussians")
    col = lambda *keys: torch.from_numpy(np.stack([np.asarray(vertex[key], np.float32) for key in keys], axis=1))
    n = len(vertex)
    sh = torch.cat([col("f_dc_0", "f_dc_1", "f_dc_2")[:, None], torch.zeros(n, k - 1, 3)], dim=1)
    if rest:
        sh[:, 1:] = col(*rest).reshape(n, 3, k - 1).transpose(1, 2)
    normals = col("nx", "ny", "nz") if {"nx", "ny", "nz"} <= names else torch.zeros(n, 3)
    return Gaussians(
        means=col("x", "y", "z"),
        quats=torch.nn.functional.normalize(col("rot_0", "rot_1", "rot_2", "rot_3"), dim=-1),
        log_scales=col("scale_0", "scale_1", "scale_2"),
        opacity_logits=col("opacity")[:, 0],
        sh=sh,
        normals=normals,
    )
