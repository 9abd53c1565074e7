"""`lrm-export-weights`: one safetensors file holding an LRM model's weights and configs, safe to share.

The file is all inference needs (`lrm-reconstruct IMAGE --weights FILE.safetensors`): the tensors are the model's
state dict under stable names, and the metadata holds the model and processor configs as plain JSON (format v2,
io/weights.py). Loading it runs no code.

`--upgrade` converts a file of format version 1 (written before v2), whose metadata was the pickled-class YAML of
the training run's config. Reading that YAML can run code, so the upgrade asks for `--trust-embedded-yaml`.

Examples:
    lrm-export-weights --load-config outputs/ds/lrm-tiny/2024-01-01_000000/config.yml --output lrm-tiny.safetensors
    lrm-export-weights --upgrade old.safetensors --output new.safetensors --trust-embedded-yaml
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

import tyro
import yaml
from nerfstudio.utils.rich_utils import CONSOLE

from lrm_nerfstudio.io.checkpoints import (
    ModelLoadError,
    check_lrm_config,
    find_checkpoint,
    model_state_from_checkpoint,
    read_trainer_config,
)
from lrm_nerfstudio.io.weights import UPGRADE_FLAG, WEIGHTS_FORMAT, WeightsSource, read_safetensors
from lrm_nerfstudio.lrm_pipeline import adopt_legacy_processor
from lrm_nerfstudio.pretrained import Pretrained, save_pretrained
from lrm_nerfstudio.quiet import print_error

IMPORTED_METHODS = {"lrm-triposr": "triposr", "lrm-openlrm": "openlrm"}
"""Methods whose step-0 v1 files were imports of a release (v1 did not record the source)."""


@dataclass
class ExportWeightsConfig:
    """Write an LRM run's model weights and configs as one safetensors file (or upgrade a version-1 file)."""

    load_config: Path | None = None
    """config.yml of the ns-train run (its latest checkpoint, or its load_step, is exported)."""
    output: Path = Path("lrm.safetensors")
    """Weights file to write."""
    upgrade: Path | None = None
    """A weights file of format version 1 to convert to version 2 (instead of --load-config)."""
    trust_embedded_yaml: bool = False
    """Allow --upgrade to evaluate the version-1 file's embedded YAML, which can run code: only for files you
    trust as you would trust a config.yml."""


def from_run(config_path: Path) -> tuple[Pretrained, Path]:
    """The model of an ns-train run (its checkpoint eval_setup would load) and that checkpoint."""
    trainer_config = read_trainer_config(config_path)
    ckpt = find_checkpoint(trainer_config, config_path)
    state, step = model_state_from_checkpoint(ckpt)
    pipeline = trainer_config.pipeline
    adopt_legacy_processor(pipeline)  # type: ignore[arg-type]
    pretrained = Pretrained(
        pipeline.model,  # type: ignore[attr-defined]
        str(trainer_config.method_name),
        WeightsSource("trained", step, None),
        state,
    )
    return pretrained, ckpt


def from_v1(path: Path) -> Pretrained:
    """The model of a version-1 weights file. EVALUATES ITS YAML (PyYAML's full loader), which can run code.

    Raises:
        ModelLoadError: not a version-1 lrm-nerfstudio weights file, or its YAML is not an LRM config.
    """
    meta, state = read_safetensors(path)
    if meta.get("format") != WEIGHTS_FORMAT or meta.get("version") != "1" or "trainer_config_yaml" not in meta:
        raise ModelLoadError(f"{path}: not a version-1 lrm-nerfstudio weights file (nothing to upgrade)")
    try:
        config = yaml.load(meta["trainer_config_yaml"], Loader=yaml.Loader)
    except (yaml.YAMLError, AttributeError, TypeError, ValueError, ImportError) as err:
        raise ModelLoadError(f"{path}: embedded config is unreadable ({type(err).__name__}: {err})") from err
    config = check_lrm_config(config, str(path))
    step = int(meta.get("step", "0"))
    method = str(config.method_name)
    family = IMPORTED_METHODS.get(method, "trained") if step == 0 else "trained"
    pipeline = config.pipeline
    adopt_legacy_processor(pipeline)  # type: ignore[arg-type]  (v1 files kept it in the datamanager)
    return Pretrained(
        pipeline.model,  # type: ignore[attr-defined]
        method,
        WeightsSource(family, step, None),  # type: ignore[arg-type]
        state,
    )


def main(config: ExportWeightsConfig) -> int:
    """Export or upgrade; returns the process exit code (2 for a bad config, checkpoint or file)."""
    if (config.load_config is None) == (config.upgrade is None):
        print_error("give exactly one of --load-config CONFIG.yml and --upgrade FILE")
        return 2
    if config.upgrade is not None and not config.trust_embedded_yaml:
        print_error(
            f"{config.upgrade}: upgrading a version-1 weights file evaluates its embedded YAML with PyYAML's full "
            f"loader, which can run code. Only if you trust the file as you would trust a config.yml, run again with "
            f"{UPGRADE_FLAG}."
        )
        return 2
    try:
        if config.upgrade is not None:
            pretrained, origin = from_v1(config.upgrade), config.upgrade
        else:
            pretrained, origin = from_run(config.load_config)  # type: ignore[arg-type]
    except ModelLoadError as err:
        print_error(str(err))
        return 2
    path = save_pretrained(config.output, pretrained)
    n_params = sum(t.numel() for t in pretrained.state.values())
    CONSOLE.print(
        f"Wrote {path} (format v2, {n_params / 1e6:.2f}M parameters, method {pretrained.method}, step "
        f"{pretrained.step}) from {origin}",
        soft_wrap=True,
        highlight=False,
    )
    return 0


def entrypoint() -> None:
    """`lrm-export-weights` console script."""
    sys.exit(main(tyro.cli(ExportWeightsConfig)))


if __name__ == "__main__":
    entrypoint()
