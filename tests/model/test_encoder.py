"""ImageEncoder: shapes, any resolution, the real from_pretrained path, and the offline fallback."""

import time

import pytest
import torch
from nerfstudio.utils.rich_utils import CONSOLE
from transformers import Dinov2Config, Dinov2Model, ViTConfig, ViTModel

from lrm_nerfstudio.model.encoder import ImageEncoderConfig, PretrainedWeightsMissing

TINY = {"image_size": 32, "patch_size": 8, "hidden_size": 32, "num_layers": 2, "num_heads": 2, "mlp_ratio": 2}
MISSING_ID = "lrm-nerfstudio-tests/no-such-model"  # never in any cache


@pytest.mark.parametrize("architecture", ["vit", "dinov2"])
def test_random_encoder_shapes_any_resolution(architecture):
    torch.manual_seed(0)
    enc = ImageEncoderConfig(architecture=architecture, **TINY).setup()
    assert enc.out_dim == 32
    for size in (32, 48):
        tokens = enc(torch.rand(2, 3, size, size))
        assert tokens.shape == (2, 1 + (size // 8) ** 2, 32)  # CLS + patches
        assert torch.isfinite(tokens).all()
    # Last hidden state is after the final LayerNorm (no affine drift at init): per-token mean ~0, std ~1.
    assert tokens.mean(-1).abs().max() < 1e-4


@pytest.mark.parametrize("architecture", ["vit", "dinov2"])
def test_from_pretrained_local_folder_loads_identical_weights(tmp_path, architecture):
    torch.manual_seed(1)
    if architecture == "vit":
        cfg = ViTConfig(
            hidden_size=32,
            num_hidden_layers=2,
            num_attention_heads=2,
            intermediate_size=64,
            image_size=32,
            patch_size=8,
        )
        ref = ViTModel(cfg, add_pooling_layer=False)
    else:
        cfg = Dinov2Config(
            hidden_size=32, num_hidden_layers=2, num_attention_heads=2, mlp_ratio=2, image_size=32, patch_size=8
        )
        ref = Dinov2Model(cfg)
    ref.save_pretrained(tmp_path)
    # The random-init fields deliberately disagree with the checkpoint: the checkpoint's config must win.
    enc = ImageEncoderConfig(
        pretrained=str(tmp_path), architecture="vit", hidden_size=64, num_layers=1, num_heads=1
    ).setup()
    assert type(enc.backbone) is type(ref)
    assert enc.out_dim == 32
    w_ref = ref.embeddings.patch_embeddings.projection.weight
    w = enc.backbone.embeddings.patch_embeddings.projection.weight
    assert torch.equal(w, w_ref)
    assert torch.equal(enc.backbone.layernorm.weight, ref.layernorm.weight)
    ref.eval()
    enc.eval()
    images = torch.rand(1, 3, 32, 32)
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    expected = ref(pixel_values=(images - mean) / std).last_hidden_state
    torch.testing.assert_close(enc(images), expected)


def test_missing_weights_fall_back_to_random_with_one_message():
    start = time.perf_counter()
    with CONSOLE.capture() as cap:
        enc = ImageEncoderConfig(pretrained=MISSING_ID, **TINY).setup()
    elapsed = time.perf_counter() - start
    text = cap.get()
    assert MISSING_ID in text and "RANDOMLY" in text and "save_pretrained" in text
    assert text.count("could not load") == 1
    assert elapsed < 5.0, f"offline lookup of a hub id took {elapsed:.1f}s: it must not wait on the network"
    assert enc(torch.rand(1, 3, 32, 32)).shape == (1, 17, 32)


def test_missing_local_folder_fallback_and_error(tmp_path):
    with pytest.raises(PretrainedWeightsMissing, match="no-such-model"):
        ImageEncoderConfig(pretrained=MISSING_ID, on_missing_weights="error", **TINY).setup()
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(PretrainedWeightsMissing, match=str(empty)):
        ImageEncoderConfig(pretrained=str(empty), on_missing_weights="error", **TINY).setup()


def test_freeze():
    enc = ImageEncoderConfig(freeze=True, **TINY).setup()
    assert not any(p.requires_grad for p in enc.parameters())
