import io
import struct
import zlib

import numpy as np
import pytest
from PIL import Image, ImageFile

from lrm_nerfstudio.data.image_preprocess import ImageInputError, preprocess_image, preprocess_image_bytes

SIZE = 64


def disc(h=120, w=160, cx=50, cy=40, r=20):
    yy, xx = np.mgrid[:h, :w]
    return ((xx + 0.5 - cx) ** 2 + (yy + 0.5 - cy) ** 2) <= r * r


def centroid_and_extent(alpha):
    a = alpha[0].numpy() > 0.5
    ys, xs = np.nonzero(a)
    return np.array([xs.mean() + 0.5, ys.mean() + 0.5]), max(np.ptp(xs), np.ptp(ys)) + 1


def check_centred(result, ratio=0.85):
    centre, extent = centroid_and_extent(result.alpha)
    np.testing.assert_allclose(centre, [SIZE / 2, SIZE / 2], atol=1.0)
    assert abs(extent - ratio * SIZE) <= 2


def test_rgba_disc_is_centred_scaled_and_composited(tmp_path):
    m = disc()
    rgba = np.zeros((*m.shape, 4), np.uint8)
    rgba[m] = (200, 30, 30, 255)
    Image.fromarray(rgba).save(tmp_path / "disc.png")
    out = preprocess_image(tmp_path / "disc.png", size=SIZE)
    assert out.had_alpha and out.image.shape == (3, SIZE, SIZE) and out.alpha.shape == (1, SIZE, SIZE)
    check_centred(out)
    np.testing.assert_allclose(out.image[:, SIZE // 2, SIZE // 2].numpy(), [200 / 255, 30 / 255, 30 / 255], atol=1e-3)
    np.testing.assert_allclose(out.image[:, 0, 0].numpy(), [1, 1, 1], atol=1e-6)  # composited on white
    assert out.bbox == (30, 20, 70, 60)


@pytest.mark.parametrize("bg", [(255, 255, 255), (40, 120, 200)])
def test_rgb_background_estimated_recentred_and_scaled(tmp_path, bg):
    m = disc(cx=120, cy=85, r=25)
    rgb = np.empty((*m.shape, 3), np.uint8)
    rgb[:] = bg
    rgb[m] = (90, 200, 60)
    rng = np.random.default_rng(0)
    noisy = np.clip(rgb.astype(int) + rng.integers(-4, 5, rgb.shape), 0, 255).astype(np.uint8)
    Image.fromarray(noisy).save(tmp_path / "photo.png")
    out = preprocess_image(tmp_path / "photo.png", size=SIZE, background_color=(0.5, 0.5, 0.5))
    assert not out.had_alpha
    check_centred(out)
    np.testing.assert_allclose(out.image[:, 1, 1].numpy(), [0.5, 0.5, 0.5], atol=1e-6)
    assert any("background colour estimated" in n for n in out.notes)


def test_grayscale_16bit_palette_and_bytes(tmp_path):
    m = disc()
    gray16 = np.where(m, 10000, 65535).astype(np.uint16)
    Image.fromarray(gray16).save(tmp_path / "g16.png")
    out = preprocess_image(tmp_path / "g16.png", size=SIZE)
    check_centred(out)
    assert out.image[0, SIZE // 2, SIZE // 2] == pytest.approx(10000 / 65535, abs=1e-3)

    pal = Image.fromarray(np.where(m, 1, 0).astype(np.uint8), mode="P")
    pal.putpalette([0, 0, 0, 255, 0, 0] + [0] * 762)
    pal.info["transparency"] = 0
    pal.save(tmp_path / "pal.png", transparency=0)
    out = preprocess_image(tmp_path / "pal.png", size=SIZE)
    assert out.had_alpha
    check_centred(out)

    Image.fromarray(np.where(m, 0, 255).astype(np.uint8), mode="L").save(tmp_path / "l.png")
    out = preprocess_image_bytes((tmp_path / "l.png").read_bytes(), "upload.png", size=SIZE)
    assert out.source_path == "upload.png" and any("grayscale" in n for n in out.notes)
    check_centred(out)


def test_array_input():
    rgba = np.zeros((100, 100, 4), np.float32)
    rgba[disc(100, 100, 30, 70, 15)] = (0.2, 0.4, 0.6, 1.0)
    check_centred(preprocess_image(rgba, size=SIZE, foreground_ratio=0.5), ratio=0.5)


def png_header_only(w, h):
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 6, 0, 0, 0)) + chunk(b"IEND", b"")


def test_bomb_guard_checks_header_before_decoding(tmp_path, monkeypatch):
    def no_decode(self):
        raise AssertionError("pixel data was decoded")

    monkeypatch.setattr(ImageFile.ImageFile, "load", no_decode)
    # Over our limit, under Pillow's: our header check must catch it.
    (tmp_path / "big.png").write_bytes(png_header_only(5000, 5000))
    with pytest.raises(ImageInputError, match=r"big\.png.*over the limit"):
        preprocess_image(tmp_path / "big.png", size=SIZE)
    # Over Pillow's limit too: Pillow refuses in Image.open, from the header; either way no pixel is decoded.
    (tmp_path / "bomb.png").write_bytes(png_header_only(100000, 100000))
    with pytest.raises(ImageInputError, match=r"bomb\.png.*(over the limit|too large to decode)"):
        preprocess_image(tmp_path / "bomb.png", size=SIZE)
    with pytest.raises(ImageInputError, match=r"up\.png.*over the limit"):
        preprocess_image_bytes(png_header_only(5000, 5000), "up.png", size=SIZE)


def test_pil_bomb_error_becomes_ours(tmp_path, monkeypatch):
    Image.fromarray(np.zeros((64, 64, 3), np.uint8)).save(tmp_path / "small.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    with pytest.raises(ImageInputError, match=r"small\.png.*too large to decode safely"):
        preprocess_image(tmp_path / "small.png", size=SIZE)


def test_bad_inputs_raise_naming_the_file(tmp_path):
    cases = {}
    cases["missing.png"] = None
    (tmp_path / "text.png").write_text("this is not an image\n")
    cases["text.png"] = "not an image"
    buf = io.BytesIO()
    Image.fromarray((np.random.default_rng(0).random((64, 64, 3)) * 255).astype(np.uint8)).save(buf, "PNG")
    (tmp_path / "trunc.png").write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    cases["trunc.png"] = "truncated or corrupt"
    Image.fromarray(np.zeros((32, 32, 4), np.uint8)).save(tmp_path / "clear.png")
    cases["clear.png"] = "fully transparent"
    Image.fromarray(np.full((32, 32, 3), 77, np.uint8)).save(tmp_path / "uniform.png")
    cases["uniform.png"] = "no foreground"
    (tmp_path / "zero.png").write_bytes(b"")
    cases["zero.png"] = "empty file"
    Image.fromarray(np.zeros((4, 400, 3), np.uint8)).save(tmp_path / "strip.png")
    cases["strip.png"] = "at least"
    (tmp_path / "zerosize.png").write_bytes(png_header_only(0, 10))
    cases["zerosize.png"] = "empty image|not an image|corrupt"
    for fname, problem in cases.items():
        with pytest.raises(ImageInputError, match=fname.replace(".", r"\.")) as info:
            preprocess_image(tmp_path / fname, size=SIZE)
        if problem:
            assert __import__("re").search(problem, str(info.value)), str(info.value)
    with pytest.raises(ImageInputError, match="missing.png: file not found"):
        preprocess_image(tmp_path / "missing.png", size=SIZE)
    with pytest.raises(ImageInputError, match="up.bin: empty upload"):
        preprocess_image_bytes(b"", "up.bin", size=SIZE)
    with pytest.raises(ImageInputError, match="up.bin: not an image"):
        preprocess_image_bytes(b"hello", "up.bin", size=SIZE)
    with pytest.raises(ImageInputError, match="<array>"):
        preprocess_image(np.zeros((0, 0, 3), np.uint8), size=SIZE)
