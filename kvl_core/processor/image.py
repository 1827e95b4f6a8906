"""Image loading and the Kimi-VL image processor (model.md §1.4, §3; gotcha §13.12).

`ImageProcessor` reproduces the reference `KimiVLImageProcessor` (HF remote code
`image_processing_kimi_vl.py`) step for step, so that an RGB picture gives bit-identical `pixel_values`:

1. patch count test on floor(w/14)*floor(h/14); if above `in_token_limit`, PIL BICUBIC downscale to
   `int(w*scale), int(h*scale)` with `scale = sqrt(limit / count)`;
2. black right/bottom padding to multiples of merge*patch (28 px);
3. grid side must stay below 512 patches (MoonViT's 2D-RoPE table);
4. uint8 -> float32 / 255, then (x - mean) / std;
5. row-major patchify to [n, 3, 14, 14].

`load_image` is the only place untrusted image bytes are decoded: it turns every decoding problem into a
`KvlError` naming the file, refuses decompression bombs from the header before decoding, applies the EXIF
orientation and converts every PIL mode to RGB.
"""

from __future__ import annotations

import base64
import binascii
import io
import math
import os
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence, Union

import numpy as np
import torch
from PIL import Image, ImageOps

from kvl_core.errors import KvlError, read_json_object, read_user_file

ImageSource = Union[str, os.PathLike, bytes, bytearray, memoryview, Image.Image]

# 2^28 px (e.g. 16384 x 16384) is far beyond anything the processor keeps (it downscales to ~4k or ~16k
# patches) yet small enough that decoding cannot exhaust memory on a normal machine. Pillow's own guard
# raises only above 2 x Image.MAX_IMAGE_PIXELS (~179 Mpx by default); whichever limit is lower wins.
DEFAULT_MAX_PIXELS = 2**28

# MoonViT's 2D-RoPE table is 512 x 512 (VisionConfig.rope_max_height/width); the reference rejects grid
# sides >= 512 patches.
MAX_GRID_SIDE = 512


# ---- loading ------------------------------------------------------------------------------------

def load_image(
    src: ImageSource,
    *,
    name: str | None = None,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    alpha_background: tuple[int, int, int] | None = None,
) -> Image.Image:
    """Open `src` (path, `file://` path, `data:` URL, raw bytes or a PIL image) as an RGB PIL image.

    `name` is used in error messages (defaults to the path, "<bytes>" or "<PIL image>").
    `alpha_background=None` keeps reference parity (alpha dropped, see `to_rgb`); pass e.g. (255, 255, 255)
    to composite transparent images on a colour instead.
    """
    if isinstance(src, Image.Image):
        label = name or "<PIL image>"
        _check_pixels(label, src.size, max_pixels)
        try:
            src.load()  # an Image.open()ed file decodes lazily; surface its errors here, as KvlError
        except Exception as e:
            raise KvlError(f"{label}: corrupt or truncated image ({type(e).__name__}: {e})") from None
        return to_rgb(_exif_upright(src), label, alpha_background)

    if isinstance(src, (bytes, bytearray, memoryview)):
        label = name or "<bytes>"
        data = bytes(src)
    elif isinstance(src, (str, os.PathLike)):
        s = os.fspath(src)
        if isinstance(s, bytes):
            s = os.fsdecode(s)
        if s.startswith("data:"):
            label = name or "<data URL>"
            data = _decode_data_url(s, label)
        elif s.startswith(("http://", "https://")):
            raise KvlError(f"{s}: remote images are not downloaded; save the file locally and pass its path")
        else:
            if s.startswith("file://"):
                s = s[len("file://"):]
            label = name or s
            data = read_user_file(s, label, "an image")
    else:
        raise KvlError(f"{name or 'image'}: unsupported image source of type {type(src).__name__}")

    if not data:
        raise KvlError(f"{label}: empty file, not an image")
    img = _decode(data, label, max_pixels)
    return to_rgb(_exif_upright(img), label, alpha_background)


def _decode_data_url(url: str, label: str) -> bytes:
    header, sep, payload = url.partition(",")
    if not sep or ";base64" not in header:
        raise KvlError(f"{label}: only base64 data URLs (data:image/...;base64,...) are supported")
    try:
        return base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError):
        raise KvlError(f"{label}: data URL payload is not valid base64") from None


def _check_pixels(label: str, size: tuple[int, int], max_pixels: int) -> None:
    w, h = size
    if w * h > max_pixels:
        raise KvlError(
            f"{label}: image is {w}x{h} = {w * h} pixels, above the limit of {max_pixels} "
            "(refusing to decode a possible decompression bomb)"
        )


def _decode(data: bytes, label: str, max_pixels: int) -> Image.Image:
    with warnings.catch_warnings():
        # Our own pixel cap replaces Pillow's DecompressionBombWarning.
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        try:
            img = Image.open(io.BytesIO(data))
        except Image.UnidentifiedImageError:
            raise KvlError(f"{label}: not an image file (format not recognised)") from None
        except Image.DecompressionBombError as e:
            raise KvlError(f"{label}: image too large, refusing to decode a possible decompression bomb ({e})") from None
        except Exception as e:  # plugins raise assorted types on broken headers
            raise KvlError(f"{label}: cannot read image header ({type(e).__name__}: {e})") from None
        # Image.open only parsed the header: the size is known before any pixel is decoded.
        _check_pixels(label, img.size, max_pixels)
        if img.width <= 0 or img.height <= 0:
            raise KvlError(f"{label}: image has zero size {img.width}x{img.height}")
        try:
            img.load()
        except MemoryError:
            raise KvlError(f"{label}: out of memory decoding a {img.width}x{img.height} image") from None
        except Exception as e:  # truncated / corrupt data: OSError, SyntaxError, ValueError, EOFError, ...
            raise KvlError(f"{label}: corrupt or truncated image ({type(e).__name__}: {e})") from None
    return img


def _exif_upright(img: Image.Image) -> Image.Image:
    """Apply the EXIF orientation tag, as viewers do; phone photos are otherwise fed sideways.

    (The reference passes the image as opened, i.e. ignores EXIF; files without the tag are unaffected.)
    Broken EXIF blocks are ignored rather than rejecting an otherwise readable image.
    """
    try:
        out = ImageOps.exif_transpose(img)
    except Exception:
        return img
    return img if out is None else out


def to_rgb(
    img: Image.Image, label: str = "image", alpha_background: tuple[int, int, int] | None = None
) -> Image.Image:
    """Convert any PIL mode to 8-bit RGB.

    Alpha: the reference does `img.convert("RGB")`, which simply drops the alpha channel (fully transparent
    pixels show whatever colour they store, often black). We keep that by default so that `pixel_values` match
    the reference model's training-time inputs; `alpha_background` composites on a colour instead, which helps
    e.g. black-on-transparent logos. Palette images with transparency are treated the same way.

    High bit depth: Pillow's `convert("RGB")` *clips* 16/32-bit integer pixels to 255 (a 16-bit PNG comes out
    almost binary), so those modes are rescaled here instead - a deliberate deviation from the reference,
    which would feed such images broken.
    """
    mode = img.mode
    if mode in ("I;16", "I;16L", "I;16B", "I;16N", "I", "F"):
        return _high_depth_to_rgb(img, label)
    has_alpha = mode in ("RGBA", "LA", "La", "RGBa", "PA") or (mode == "P" and "transparency" in img.info)
    with warnings.catch_warnings():
        # Pillow warns about palette transparency given as bytes; we handle alpha explicitly.
        warnings.simplefilter("ignore", UserWarning)
        try:
            if has_alpha and alpha_background is not None:
                rgba = img.convert("RGBA")
                canvas = Image.new("RGBA", rgba.size, (*alpha_background, 255))
                return Image.alpha_composite(canvas, rgba).convert("RGB")
            if mode == "RGB":
                return img
            return img.convert("RGB")
        except (ValueError, OSError) as e:
            raise KvlError(f"{label}: cannot convert image mode {mode!r} to RGB ({e})") from None


def _high_depth_to_rgb(img: Image.Image, label: str) -> Image.Image:
    arr = np.asarray(img)
    if arr.ndim != 2:
        raise KvlError(f"{label}: unsupported image mode {img.mode!r}")
    a = arr.astype(np.float64)
    if img.mode == "F":
        # Float images: [0, 1] is the usual convention; anything larger is taken as 0..255 data.
        peak = float(np.nanmax(a)) if a.size else 0.0
        a = a * 255.0 if peak <= 1.0 else a
    else:
        # I;16 is 16-bit by definition. Mode "I" (32-bit) carries no depth: 16-bit PNG/TIFF data decoded as "I"
        # exceeds 255, 8-bit data does not.
        if img.mode.startswith("I;16") or (a.size and a.max() > 255):
            a = a / 257.0  # 65535 -> 255 exactly
    a = np.nan_to_num(a, nan=0.0)
    g = np.clip(np.rint(a), 0, 255).astype(np.uint8)
    return Image.fromarray(np.repeat(g[:, :, None], 3, axis=2), "RGB")


# ---- processing ---------------------------------------------------------------------------------

@dataclass(frozen=True)
class ImagePlan:
    """Geometry of one image through the processor (matches the fields of image_token_counts.json)."""

    image_wh: tuple[int, int]
    resized_wh: tuple[int, int]  # after the (optional) downscale
    padded_wh: tuple[int, int]  # after padding (or centre crop when pad_input is False)
    grid_hw: tuple[int, int]  # (rows, cols) in 14-px patches
    tokens: int  # LM placeholder tokens = grid_h * grid_w / (merge_h * merge_w)

    @property
    def num_patches(self) -> int:
        return self.grid_hw[0] * self.grid_hw[1]


@dataclass
class ImageProcessor:
    """Reference-identical Kimi-VL image processor. Defaults: Kimi-VL-A3B-Instruct / -Thinking (2504)."""

    patch_size: int = 14
    merge_kernel_size: tuple[int, int] = (2, 2)  # (rows, cols)
    in_token_limit: int = 4096  # in 14-px patches *before* merging; 16384 for Thinking-2506
    pad_input: bool = True
    image_mean: tuple[float, float, float] = (0.5, 0.5, 0.5)
    image_std: tuple[float, float, float] = (0.5, 0.5, 0.5)
    max_grid_side: int = MAX_GRID_SIDE
    # kvl extension (`kvl_upscale` in preprocessor_config.json, absent = 1 = the reference): enlarge every
    # image by this factor (PIL bicubic) before the patch budget is applied. kvl-nano reads at 2x: a
    # 13-18 px glyph then spans one to two 14-px patches instead of sharing one with its neighbours.
    upscale: float = 1.0

    def __post_init__(self) -> None:
        self.merge_kernel_size = tuple(int(k) for k in self.merge_kernel_size)  # type: ignore[assignment]
        self.image_mean = tuple(float(x) for x in self.image_mean)  # type: ignore[assignment]
        self.image_std = tuple(float(x) for x in self.image_std)  # type: ignore[assignment]
        self._validate("image processor settings")

    def _validate(self, source: str) -> None:
        problems = []
        if not isinstance(self.patch_size, int) or self.patch_size <= 0:
            problems.append("patch_size must be a positive integer")
        if len(self.merge_kernel_size) != 2 or any(k <= 0 for k in self.merge_kernel_size):
            problems.append("merge_kernel_size must be two positive integers")
        if not isinstance(self.in_token_limit, int) or self.in_token_limit <= 0:
            problems.append("in_token_limit must be a positive integer")
        if not (isinstance(self.upscale, (int, float)) and 0.25 <= self.upscale <= 8):
            problems.append("kvl_upscale must be a number from 0.25 to 8")
        if len(self.image_mean) != 3 or len(self.image_std) != 3:
            problems.append("image_mean and image_std need 3 values (RGB)")
        elif any(s == 0 for s in self.image_std):
            problems.append("image_std must not contain 0")
        if problems:
            raise KvlError(f"{source}: " + "; ".join(problems))

    # ---- construction ---------------------------------------------------------------------------

    @classmethod
    def from_pretrained(cls, model_dir: str | os.PathLike) -> "ImageProcessor":
        """Read `preprocessor_config.json` from a checkpoint folder; the defaults apply when it is absent."""
        path = Path(model_dir) / "preprocessor_config.json"
        if not path.is_file():
            return cls()
        return cls.from_dict(read_json_object(path), source=str(path))

    @classmethod
    def from_dict(cls, d: dict[str, Any], source: str = "preprocessor_config.json") -> "ImageProcessor":
        kw: dict[str, Any] = {}
        for key, value in d.items():
            try:
                if key in ("patch_size", "in_token_limit"):
                    kw[key] = _as_int(value)
                elif key == "merge_kernel_size":
                    kw[key] = (_as_int(value),) * 2 if isinstance(value, int) else tuple(_as_int(x) for x in value)
                elif key == "pad_input":
                    if not isinstance(value, bool):
                        raise TypeError(f"expected true or false, got {value!r}")
                    kw[key] = value
                elif key in ("image_mean", "image_std"):
                    kw[key] = tuple(float(x) for x in value)
                elif key == "kvl_upscale":
                    if isinstance(value, bool) or not isinstance(value, (int, float)):
                        raise TypeError(f"expected a number, got {value!r}")
                    kw["upscale"] = float(value)
            except (TypeError, ValueError) as e:
                raise KvlError(f"{source}: invalid {key} ({e})") from None
        try:
            return cls(**kw)
        except KvlError as e:
            raise KvlError(f"{source}: {str(e).split(': ', 1)[-1]}") from None

    def to_dict(self) -> dict[str, Any]:
        return {
            "image_processor_type": "KimiVLImageProcessor",
            "patch_size": self.patch_size,
            "merge_kernel_size": list(self.merge_kernel_size),
            "in_token_limit": self.in_token_limit,
            "pad_input": self.pad_input,
            "image_mean": list(self.image_mean),
            "image_std": list(self.image_std),
            **({"kvl_upscale": self.upscale} if self.upscale != 1 else {}),
        }

    # ---- geometry -------------------------------------------------------------------------------

    def plan(self, width: int, height: int, source: str = "image") -> ImagePlan:
        """Sizes an image of `width` x `height` goes through, without touching pixels.

        Raises KvlError for images the vision tower cannot take (a grid side of 512+ patches, or an aspect
        ratio so extreme that the downscale truncates a side to 0 px).
        """
        ps = self.patch_size
        mh, mw = self.merge_kernel_size
        w, h = int(width), int(height)
        if w <= 0 or h <= 0:
            raise KvlError(f"{source}: image has zero size {w}x{h}")
        if self.upscale != 1:
            w, h = max(1, round(w * self.upscale)), max(1, round(h * self.upscale))
        count = (w // ps) * (h // ps)
        if count > self.in_token_limit:
            # float64 sqrt and int() truncation exactly as the reference: sizes must match it to the pixel.
            scale = math.sqrt(self.in_token_limit / count)
            w, h = int(w * scale), int(h * scale)
            if w == 0 or h == 0:
                raise KvlError(
                    f"{source}: aspect ratio {width}x{height} is too extreme: downscaling to the "
                    f"{self.in_token_limit}-patch budget leaves a side of 0 pixels"
                )
        resized = (w, h)
        if self.pad_input:
            pw, ph = w + (-w) % (mw * ps), h + (-h) % (mh * ps)
        else:
            pw, ph = w - w % ps, h - h % ps
            if pw == 0 or ph == 0:
                raise KvlError(f"{source}: image {w}x{h} is smaller than one {ps}-px patch (pad_input is off)")
        gh, gw = ph // ps, pw // ps
        if gh >= self.max_grid_side or gw >= self.max_grid_side:
            raise KvlError(
                f"{source}: image {width}x{height} gives a {gh}x{gw} patch grid; the vision tower's position "
                f"table allows fewer than {self.max_grid_side} patches per side (crop or split the image)"
            )
        if gh % mh or gw % mw:
            raise KvlError(
                f"{source}: patch grid {gh}x{gw} is not divisible by the merge kernel {mh}x{mw} "
                "(only possible with pad_input off)"
            )
        return ImagePlan((int(width), int(height)), resized, (pw, ph), (gh, gw), (gh // mh) * (gw // mw))

    def num_image_tokens(self, width: int, height: int) -> int:
        """Number of `<|media_pad|>` tokens (= LM positions) an image of this size occupies."""
        return self.plan(width, height).tokens

    # ---- pixels ---------------------------------------------------------------------------------

    def preprocess(self, image: Image.Image, source: str = "image") -> tuple[torch.Tensor, tuple[int, int]]:
        """One PIL image -> (patches [gh*gw, 3, ps, ps] float32, (gh, gw))."""
        if image.mode != "RGB":
            # The reference resizes in the original mode and converts afterwards; load_image already hands us
            # RGB, and for other modes converting first is the only well-defined order (see to_rgb).
            image = to_rgb(image, source)
        p = self.plan(image.width, image.height, source)
        if p.resized_wh != p.image_wh:
            image = image.resize(p.resized_wh, Image.Resampling.BICUBIC)
        arr = np.array(image, dtype=np.uint8)  # a writable copy for torch.from_numpy
        w, h = p.resized_wh
        pw, ph = p.padded_wh
        if self.pad_input:
            if (pw, ph) != (w, h):
                arr = np.pad(arr, ((0, ph - h), (0, pw - w), (0, 0)))  # black, right and bottom
        else:
            # torchvision center_crop offsets: round() of the half difference (banker's rounding).
            top, left = int(round((h - ph) / 2.0)), int(round((w - pw) / 2.0))
            arr = arr[top:top + ph, left:left + pw]
        x = torch.from_numpy(np.ascontiguousarray(arr)).permute(2, 0, 1).contiguous()
        # Same float32 operation sequence as TF.to_tensor + TF.normalize, hence bit-identical values.
        x = x.to(torch.float32).div(255)
        mean = torch.tensor(self.image_mean, dtype=torch.float32).view(3, 1, 1)
        std = torch.tensor(self.image_std, dtype=torch.float32).view(3, 1, 1)
        x = x.sub_(mean).div_(std)
        ps = self.patch_size
        gh, gw = p.grid_hw
        patches = x.reshape(3, gh, ps, gw, ps).permute(1, 3, 0, 2, 4).reshape(gh * gw, 3, ps, ps).contiguous()
        return patches, (gh, gw)

    def __call__(self, images: Sequence[Image.Image], sources: Sequence[str] | None = None) -> dict[str, torch.Tensor]:
        """Pack several images: `pixel_values` [sum(gh*gw), 3, ps, ps] float32, `image_grid_hws` [N, 2] int64."""
        if isinstance(images, Image.Image):
            images = [images]
        if sources is not None and len(sources) != len(images):
            raise ValueError("sources must name every image")
        chunks: list[torch.Tensor] = []
        grids: list[tuple[int, int]] = []
        for i, img in enumerate(images):
            src = sources[i] if sources is not None else f"image {i + 1}"
            patches, grid = self.preprocess(img, src)
            chunks.append(patches)
            grids.append(grid)
        ps = self.patch_size
        pixel_values = torch.cat(chunks) if chunks else torch.empty(0, 3, ps, ps, dtype=torch.float32)
        image_grid_hws = torch.tensor(grids, dtype=torch.int64).reshape(-1, 2)
        return {"pixel_values": pixel_values, "image_grid_hws": image_grid_hws}


def _as_int(v: Any) -> int:
    if isinstance(v, bool) or not isinstance(v, int):
        raise TypeError(f"expected an integer, got {v!r}")
    return v


_steady = False


def steady_memory() -> None:
    """Make glibc hand page-sized buffers back to the OS when they are freed (once per process).

    Measured (bench/bench_documents.py): rendering and preprocessing letter pages grew RSS by ~3 MB per page
    without bound (15 GB after 2,000 pages), because glibc raises its mmap threshold after the first large
    free and then serves the multi-MB pixel buffers from heap arenas that it never trims. Pinning the
    threshold at 1 MiB keeps RSS flat at the cost of one mmap per large buffer. A no-op off glibc.
    """
    global _steady
    if _steady:
        return
    _steady = True
    if not sys.platform.startswith("linux"):
        return
    try:
        import ctypes

        ctypes.CDLL(None).mallopt(-3, 1 << 20)  # M_MMAP_THRESHOLD = 1 MiB
    except (OSError, AttributeError):  # not glibc (musl has no effect, others no symbol): nothing to pin
        pass
