"""Image loading and the Kimi-VL image processor (model.md §3, §1.4; golden table image_token_counts.json)."""

from __future__ import annotations

import base64
import io
import json
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from kvl_core.errors import KvlError
from kvl_core.processor.image import ImageProcessor, load_image

from .helpers import FIXTURE_DIR

TABLE_PATH = FIXTURE_DIR / "image_token_counts.json"
ROWS = json.loads(TABLE_PATH.read_text()) if TABLE_PATH.is_file() else []
needs_table = pytest.mark.skipif(not ROWS, reason=f"{TABLE_PATH} not found")


def _norm(a: np.ndarray) -> np.ndarray:
    """model.md §3 step 4 in float32: (p/255 - 0.5) / 0.5."""
    return (a.astype(np.float32) / np.float32(255) - np.float32(0.5)) / np.float32(0.5)


def _noise(w: int, h: int, seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8), "RGB")


def _expected_patches(arr: np.ndarray, grid_hw: tuple[int, int], ps: int = 14) -> np.ndarray:
    """Patch k = row-major (r, c); patch[ch, y, x] = pixel (r*ps+y, c*ps+x); outside the image: black."""
    gh, gw = grid_hw
    h, w = arr.shape[:2]
    out = np.empty((gh * gw, 3, ps, ps), np.float32)
    black = _norm(np.zeros(1, np.uint8))[0]
    for r in range(gh):
        for c in range(gw):
            block = np.full((ps, ps, 3), black, np.float32)
            ys, xs = r * ps, c * ps
            src = arr[ys:min(ys + ps, h), xs:min(xs + ps, w)]
            block[:src.shape[0], :src.shape[1]] = _norm(src)
            out[r * gw + c] = block.transpose(2, 0, 1)
    return out


# ---- sizing: the golden table ----------------------------------------------------------------------

@needs_table
@pytest.mark.parametrize("row", ROWS, ids=[f"{r['image_wh'][0]}x{r['image_wh'][1]}@{r['in_token_limit']}" for r in ROWS])
def test_token_table(row):
    proc = ImageProcessor(in_token_limit=row["in_token_limit"])
    plan = proc.plan(*row["image_wh"])
    assert list(plan.resized_wh) == row["resized_wh"]
    assert list(plan.padded_wh) == row["padded_wh"]
    assert list(plan.grid_hw) == row["grid_hw"]
    assert plan.tokens == row["tokens"]
    assert proc.num_image_tokens(*row["image_wh"]) == row["tokens"]


@pytest.mark.parametrize(
    "wh, limit, tokens",
    # model.md §3 examples
    [((448, 448), 4096, 256), ((640, 480), 4096, 414), ((1280, 720), 4096, 1075), ((1280, 720), 16384, 1196),
     ((1920, 1080), 4096, 1032), ((1920, 1080), 16384, 2691), ((1792, 1792), 4096, 1024),
     ((1792, 1792), 16384, 4096), ((3840, 2160), 4096, 1032), ((3840, 2160), 16384, 4214),
     ((1024, 1024), 4096, 1089), ((1, 1), 4096, 1)],
)
def test_token_examples_from_spec(wh, limit, tokens):
    assert ImageProcessor(in_token_limit=limit).num_image_tokens(*wh) == tokens


# ---- pixels ----------------------------------------------------------------------------------------

def test_pixel_values_layout_padding_and_normalisation():
    img = _noise(30, 20)  # no resize; padded to 56x28 -> grid (2, 4)
    patches, grid = ImageProcessor().preprocess(img)
    assert grid == (2, 4)
    assert patches.dtype == torch.float32 and patches.shape == (8, 3, 14, 14)
    expected = _expected_patches(np.asarray(img), grid)
    assert np.array_equal(patches.numpy(), expected)
    # padding is black -> -1 exactly; content spans [-1, 1]
    assert patches[3, :, :, 2:].eq(-1).all()
    assert patches.min() >= -1 and patches.max() <= 1


@needs_table
def test_downscale_is_pil_bicubic_to_table_size():
    row = next(r for r in ROWS if r["image_wh"] == [1024, 1024] and r["in_token_limit"] == 4096)
    img = _noise(1024, 1024, seed=3)
    patches, grid = ImageProcessor(in_token_limit=4096).preprocess(img)
    assert list(grid) == row["grid_hw"]
    resized = np.asarray(img.resize(tuple(row["resized_wh"]), Image.Resampling.BICUBIC))
    assert np.array_equal(patches.numpy(), _expected_patches(resized, grid))


def test_normalisation_uses_configured_mean_std():
    img = Image.new("RGB", (28, 28), (255, 0, 51))
    proc = ImageProcessor(image_mean=(0.25, 0.5, 0.2), image_std=(0.5, 0.25, 0.1))
    patches, _ = proc.preprocess(img)
    got = patches[0, :, 0, 0]
    exp = [(1.0 - 0.25) / 0.5, (0.0 - 0.5) / 0.25, (0.2 - 0.2) / 0.1]
    assert torch.allclose(got, torch.tensor(exp), atol=1e-6)


def test_packing_several_images():
    proc = ImageProcessor()
    imgs = [_noise(30, 20, 1), _noise(60, 90, 2), _noise(28, 28, 3)]
    out = proc(imgs)
    grids = [(2, 4), (8, 6), (2, 2)]  # ceil to 28 px: 56x28, 84x112, 28x28 -> (h, w) in patches
    assert out["image_grid_hws"].dtype == torch.int64
    assert out["image_grid_hws"].tolist() == [list(g) for g in grids]
    assert out["pixel_values"].shape == (8 + 48 + 4, 3, 14, 14)
    offset = 0
    for img, g in zip(imgs, grids):
        n = g[0] * g[1]
        assert np.array_equal(out["pixel_values"][offset:offset + n].numpy(), _expected_patches(np.asarray(img), g))
        offset += n


def test_many_images_and_empty_list():
    proc = ImageProcessor()
    out = proc([Image.new("RGB", (28, 28), (i, i, i)) for i in range(100)])
    assert out["pixel_values"].shape == (400, 3, 14, 14)
    assert out["image_grid_hws"].shape == (100, 2)
    assert out["pixel_values"][4 * 99, 0, 0, 0].item() == pytest.approx(99 / 255 * 2 - 1, abs=1e-6)
    empty = proc([])
    assert empty["pixel_values"].shape == (0, 3, 14, 14) and empty["image_grid_hws"].shape == (0, 2)


def test_non_rgb_pil_input_is_converted():
    patches, grid = ImageProcessor().preprocess(Image.new("L", (28, 28), 255))
    assert grid == (2, 2) and patches.eq(1).all()


# ---- the 512-patch position table -------------------------------------------------------------------

def test_extreme_aspect_ratio_is_rejected_clearly():
    proc = ImageProcessor()
    # 1428 x 1 floor patches = under the limit: no downscale, and the width alone needs 715 patches.
    with pytest.raises(KvlError, match="512"):
        proc.plan(20000, 20)
    with pytest.raises(KvlError, match="512") as e:
        proc.preprocess(Image.new("RGB", (20000, 20)), source="strip.png")
    assert "strip.png" in str(e.value)
    with pytest.raises(KvlError):
        proc.plan(12_000_000, 14)  # downscale would truncate the height to 0 px


def test_grid_side_limit_boundary():
    proc = ImageProcessor(in_token_limit=10**6)
    assert proc.plan(7140, 28).grid_hw == (2, 510)
    with pytest.raises(KvlError, match="512"):
        proc.plan(7141, 28)  # pads to 7168 px = 512 patches
    with pytest.raises(KvlError, match="512"):
        proc.plan(8000, 8000)


def test_zero_size():
    with pytest.raises(KvlError, match="zero size"):
        ImageProcessor().plan(0, 10)


# ---- configuration ----------------------------------------------------------------------------------

def test_from_pretrained_fixture(fixture_dir):
    proc = ImageProcessor.from_pretrained(fixture_dir)
    cfg = json.loads((fixture_dir / "preprocessor_config.json").read_text())
    assert proc.in_token_limit == cfg["in_token_limit"] == 256
    assert proc.patch_size == 14 and proc.merge_kernel_size == (2, 2) and proc.pad_input is True
    assert proc.image_mean == (0.5, 0.5, 0.5) and proc.image_std == (0.5, 0.5, 0.5)


def test_from_pretrained_defaults_and_2506(tmp_path):
    assert ImageProcessor.from_pretrained(tmp_path).in_token_limit == 4096
    (tmp_path / "preprocessor_config.json").write_text(json.dumps(
        {"image_processor_type": "KimiVLImageProcessor", "in_token_limit": 16384, "patch_size": 14,
         "merge_kernel_size": [2, 2], "pad_input": True, "num_pooled_tokens": 4096}))
    proc = ImageProcessor.from_pretrained(tmp_path)
    assert proc.in_token_limit == 16384
    assert proc.num_image_tokens(1920, 1080) == 2691


@pytest.mark.parametrize("content, message", [
    ("{oops", "not valid JSON"),
    ('{"in_token_limit": "many"}', "in_token_limit"),
    ('{"in_token_limit": -5}', "in_token_limit"),
    ('{"merge_kernel_size": [2]}', "merge_kernel_size"),
    ('{"image_std": [0.5, 0, 0.5]}', "image_std"),
    ("[1, 2]", "JSON object"),
])
def test_bad_preprocessor_config(tmp_path, content, message):
    p = tmp_path / "preprocessor_config.json"
    p.write_text(content)
    with pytest.raises(KvlError, match=message) as e:
        ImageProcessor.from_pretrained(tmp_path)
    assert str(p) in str(e.value)


# ---- loading: modes ----------------------------------------------------------------------------------

def _save(img: Image.Image, path: Path, **kw) -> Path:
    img.save(path, **kw)
    return path


def _px(img: Image.Image, xy=(0, 0)) -> tuple[int, int, int]:
    assert img.mode == "RGB"
    return img.getpixel(xy)


def test_rgb_png_exact(tmp_path):
    src = _noise(17, 9)
    out = load_image(_save(src, tmp_path / "a.png"))
    assert out.mode == "RGB" and np.array_equal(np.asarray(out), np.asarray(src))


def test_rgba_drops_alpha_like_reference(tmp_path):
    img = Image.new("RGBA", (2, 1))
    img.putpixel((0, 0), (200, 10, 10, 0))      # fully transparent, stored colour red-ish
    img.putpixel((1, 0), (0, 0, 0, 128))
    path = _save(img, tmp_path / "t.png")
    assert _px(load_image(path)) == (200, 10, 10)  # reference: convert("RGB") keeps the stored colour
    white = load_image(path, alpha_background=(255, 255, 255))
    assert _px(white) == (255, 255, 255)
    assert all(abs(v - 127) <= 1 for v in _px(white, (1, 0)))


def test_la_l_and_1bit(tmp_path):
    assert _px(load_image(_save(Image.new("LA", (1, 1), (100, 0)), tmp_path / "la.png"))) == (100, 100, 100)
    assert _px(load_image(_save(Image.new("L", (1, 1), 77), tmp_path / "l.png"))) == (77, 77, 77)
    one = Image.new("1", (2, 1), 0)
    one.putpixel((1, 0), 1)
    out = load_image(_save(one, tmp_path / "one.png"))
    assert _px(out) == (0, 0, 0) and _px(out, (1, 0)) == (255, 255, 255)


def test_palette_with_transparency(tmp_path):
    p = Image.new("P", (2, 1), 0)
    p.putpalette([255, 0, 0, 0, 255, 0] + [0] * (254 * 3))
    p.putpixel((1, 0), 1)
    path = _save(p, tmp_path / "p.png", transparency=0)
    out = load_image(path)
    assert _px(out) == (255, 0, 0) and _px(out, (1, 0)) == (0, 255, 0)
    out = load_image(path, alpha_background=(255, 255, 255))
    assert _px(out) == (255, 255, 255) and _px(out, (1, 0)) == (0, 255, 0)
    gif = load_image(_save(p, tmp_path / "p.gif"))
    assert _px(gif, (1, 0)) == (0, 255, 0)


def test_cmyk(tmp_path):
    img = Image.new("CMYK", (2, 1), (0, 255, 0, 0))  # magenta ink only
    img.putpixel((1, 0), (0, 0, 0, 255))             # black ink only
    out = load_image(_save(img, tmp_path / "c.tif"))
    assert _px(out) == (255, 0, 255) and _px(out, (1, 0)) == (0, 0, 0)


def test_16_bit_is_rescaled_not_clipped(tmp_path):
    a = np.array([[0, 257 * 100, 65535, 128]], dtype=np.uint16)
    out = load_image(_save(Image.fromarray(a), tmp_path / "g16.png"))
    row = np.asarray(out)[0, :, 0].tolist()
    assert row == [0, 100, 255, 0]  # 128/257 rounds to 0; Pillow's own convert would give 255 for all but 0
    i32 = Image.fromarray(np.array([[0, 65535, 257 * 7]], dtype=np.int32), "I")
    assert np.asarray(load_image(_save(i32, tmp_path / "i32.tif")))[0, :, 1].tolist() == [0, 255, 7]
    i8 = Image.fromarray(np.array([[0, 200]], dtype=np.int32), "I")  # 8-bit data held in mode I
    assert np.asarray(load_image(i8))[0, :, 2].tolist() == [0, 200]


def test_float_image(tmp_path):
    f = Image.fromarray(np.array([[0.0, 0.5, 1.0]], dtype=np.float32), "F")
    assert np.asarray(load_image(_save(f, tmp_path / "f.tif")))[0, :, 0].tolist() == [0, 128, 255]


def test_exif_orientation_applied(tmp_path):
    img = Image.new("RGB", (40, 20), (255, 0, 0))
    img.paste((0, 0, 255), (20, 0, 40, 20))  # left red, right blue
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    out = load_image(_save(img, tmp_path / "rot.jpg", exif=exif, quality=95))
    assert out.size == (20, 40)
    top, bottom = _px(out, (10, 5)), _px(out, (10, 35))
    assert top[0] > 200 and top[2] < 60      # the left (red) half is now on top
    assert bottom[2] > 200 and bottom[0] < 60


def test_sources_bytes_pil_data_url(tmp_path):
    src = _noise(5, 4)
    buf = io.BytesIO()
    src.save(buf, "PNG")
    data = buf.getvalue()
    for s in (data, bytearray(data), src, "data:image/png;base64," + base64.b64encode(data).decode(),
              f"file://{_save(src, tmp_path / 'x.png')}"):
        assert np.array_equal(np.asarray(load_image(s)), np.asarray(src))


# ---- loading: errors -----------------------------------------------------------------------------------

def _png_header_only(w: int, h: int) -> bytes:
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
    ihdr = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b"")


def test_decompression_bomb_rejected_from_header(tmp_path):
    p = tmp_path / "bomb.png"
    p.write_bytes(_png_header_only(30000, 30000))
    with pytest.raises(KvlError) as e:
        load_image(p)
    assert str(p) in str(e.value)


def test_pixel_cap_checked_before_decoding(tmp_path):
    # 144 Mpx declared but no pixel data: only a header check can report the size instead of a decode error.
    p = tmp_path / "big.png"
    p.write_bytes(_png_header_only(12000, 12000))
    with pytest.raises(KvlError, match="144000000 pixels, above the limit of 100000000") as e:
        load_image(p, max_pixels=10**8)
    assert str(p) in str(e.value)
    small = tmp_path / "small.png"
    _noise(100, 100).save(small)
    with pytest.raises(KvlError, match="above the limit"):
        load_image(small, max_pixels=1000)
    with pytest.raises(KvlError, match="above the limit"):
        load_image(_noise(100, 100), max_pixels=1000)


def test_corrupt_truncated_and_non_images(tmp_path):
    buf = io.BytesIO()
    _noise(64, 64).save(buf, "PNG")
    png = buf.getvalue()
    cases = {
        "truncated.png": png[: len(png) // 2],
        "corrupt.png": png[:60] + bytes(200) + png[260:],
        "notes.txt": b"hello, I am not an image\n",
        "empty.png": b"",
        "random.jpg": np.random.default_rng(0).integers(0, 256, 500, dtype=np.uint8).tobytes(),
    }
    for name, data in cases.items():
        p = tmp_path / name
        p.write_bytes(data)
        with pytest.raises(KvlError) as e:
            load_image(p)
        assert str(p) in str(e.value), name
    with pytest.raises(KvlError, match="<bytes>"):
        load_image(b"GIF89a broken")
    with pytest.raises(KvlError, match="upload.png"):
        load_image(b"nope", name="upload.png")


def test_missing_directory_and_remote(tmp_path):
    with pytest.raises(KvlError, match="no such file") as e:
        load_image(tmp_path / "missing.png")
    assert "missing.png" in str(e.value)
    with pytest.raises(KvlError, match="directory"):
        load_image(tmp_path)
    with pytest.raises(KvlError, match="remote"):
        load_image("https://example.com/cat.png")
    with pytest.raises(KvlError, match="base64"):
        load_image("data:image/png;base64,@@@")
    with pytest.raises(KvlError, match="unsupported image source"):
        load_image(12345)  # type: ignore[arg-type]


# ---- kvl_upscale: kvl-nano reads at a larger scale (absent = the reference processor) ----------------

def test_upscale_enlarges_before_the_budget_and_round_trips_through_the_config():
    ip = ImageProcessor(in_token_limit=4096, upscale=2.0)
    plan = ip.plan(392, 168)
    assert plan.resized_wh == (784, 336) and plan.grid_hw == (24, 56) and plan.tokens == 12 * 28
    img = Image.new("RGB", (392, 168), (255, 255, 255))
    patches, grid = ip.preprocess(img)
    assert grid == (24, 56) and patches.shape == (24 * 56, 3, 14, 14)
    d = ip.to_dict()
    assert d["kvl_upscale"] == 2.0 and ImageProcessor.from_dict(d).upscale == 2.0
    assert "kvl_upscale" not in ImageProcessor().to_dict()  # the reference's files stay exactly as they are


def test_upscale_then_the_patch_budget_still_applies():
    ip = ImageProcessor(in_token_limit=768, upscale=2.0)
    plan = ip.plan(448, 336)  # 896 x 672 = 3072 patches > 768: scaled back down to fit
    assert plan.num_patches <= 768


@pytest.mark.parametrize("bad", ["2", True, 0, 100])
def test_bad_upscale_in_a_config_is_one_line(bad):
    with pytest.raises(KvlError, match="kvl_upscale"):
        ImageProcessor.from_dict({"kvl_upscale": bad}, source="m/preprocessor_config.json")
