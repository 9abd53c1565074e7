"""The methods are registered through nerfstudio's entry points."""

import subprocess
import sys
from pathlib import Path

from nerfstudio.plugins.registry import discover_methods

from lrm_nerfstudio.lrm_pipeline import LRMPipelineConfig
from lrm_nerfstudio.model.processor import ProcessorConfig


def test_entry_points_load():
    methods, _ = discover_methods()
    for name in ("lrm", "lrm-tiny", "lrm-demo"):
        assert name in methods, f"{name} missing from nerfstudio.method_configs"
        assert isinstance(methods[name].pipeline, LRMPipelineConfig)
        assert methods[name].viewer.websocket_host == "127.0.0.1"
    paper = methods["lrm"].pipeline.model
    assert (paper.transformer.num_layers, paper.transformer.inner_dim, paper.transformer.triplane_low_res) == (
        16,
        1024,
        32,
    )
    assert paper.upsampler.out_dim == 80 and paper.encoder.pretrained == "facebook/dino-vitb16"


def test_ns_train_help_lists_lrm():
    ns_train = Path(sys.executable).parent / "ns-train"
    out = subprocess.run([str(ns_train), "--help"], check=False, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "lrm-tiny" in out.stdout and "lrm " in out.stdout.replace("\n", " ")


def test_released_architecture_methods_are_registered():
    methods, _ = discover_methods()
    triposr, openlrm = methods["lrm-triposr"].pipeline, methods["lrm-openlrm"].pipeline
    assert triposr.model.transformer.block_style == "triposr" and triposr.model.sampler == "midpoint"
    assert triposr.model.processor == ProcessorConfig(512, (0.5, 0.5, 0.5), "bilinear_antialias", 0.85)
    assert openlrm.model.transformer.modln_affine and openlrm.model.field.plane_axes == ((0, 1), (0, 2), (2, 1))
    assert openlrm.model.processor == ProcessorConfig(336, (1.0, 1.0, 1.0), "bicubic_align_corners", 0.8)


def test_dataparser_entry_point_loads():
    """Registered so that ns-train / ns-viewer / ns-export load the plugin (and its warning filters) before
    nerfstudio imports its models (tests/test_quiet.py checks the effect)."""
    from nerfstudio.plugins.registry_dataparser import discover_dataparsers

    from lrm_nerfstudio.data.lrm_dataparser import LRMDataParserConfig

    parsers, _ = discover_dataparsers()
    assert isinstance(parsers["lrm-multiview"], LRMDataParserConfig)


def test_weights_of_every_registered_method_load():
    """A weights file names its method (`lrm-export-weights` of an `lrm-demo` run says lrm-demo): every method
    registered with nerfstudio must be one `load_model(weights=...)` can rebuild."""
    from importlib.metadata import entry_points

    from lrm_nerfstudio.methods import METHODS

    registered = {ep.name for ep in entry_points(group="nerfstudio.method_configs") if ep.value.startswith("lrm_")}
    assert "lrm-demo" in registered and registered <= set(METHODS), registered - set(METHODS)
