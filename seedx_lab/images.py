"""Images in: any supported input as an RGB PIL image, and RGB pixels as CLIP-normalised tensors.

Every stage that takes an image (tiling, the ViT, the judge, training) comes through here, so the
checks on what a user passes in live in one place.
"""
from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from .validate import regular_file

# CLIP / OpenAI image statistics, used by Qwen-VL and SEED-X's image transform.
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def _channel_stats(pixels: torch.Tensor, fn: str):
    if pixels.dim() not in (3, 4) or pixels.shape[-3] != 3:
        raise ValueError(f"{fn} expects RGB pixels [3, H, W] or [B, 3, H, W], got shape {tuple(pixels.shape)}")
    if not pixels.is_floating_point():
        raise ValueError(f"{fn} expects floating-point pixels in [0, 1], got dtype {pixels.dtype}")
    mean = torch.tensor(CLIP_MEAN, device=pixels.device, dtype=pixels.dtype).view(3, 1, 1)
    std = torch.tensor(CLIP_STD, device=pixels.device, dtype=pixels.dtype).view(3, 1, 1)
    return mean, std


def normalize(pixels: torch.Tensor) -> torch.Tensor:
    """RGB in [0, 1], [B, 3, H, W] or [3, H, W] -> CLIP-normalised, same shape."""
    mean, std = _channel_stats(pixels, "normalize")
    return (pixels - mean) / std


_normalize = normalize       # to_tensor's argument is also called normalize


def denormalize(x: torch.Tensor) -> torch.Tensor:
    """Inverse of ``normalize``: CLIP-normalised -> RGB in [0, 1] (not clamped)."""
    mean, std = _channel_stats(x, "denormalize")
    return x * std + mean



def to_pil_rgb(image) -> Image.Image:
    """Any supported image input as an RGB PIL image.

    Accepts a path, a PIL image of any mode (RGBA/LA/P composited on white, L, I;16, I, F, CMYK),
    a numpy array or torch tensor in HWC or CHW layout, uint8 (0..255) or float (0..1).

    * A file is turned upright by its EXIF orientation (so is a PIL image just opened from a file,
      untouched). Of an animated file (GIF, APNG, WebP …) the first frame is used and a
      ``UserWarning`` names the file and its number of frames; an animated PIL image uses its
      current frame, also with a warning.
    * Layout of arrays: a numpy array is read as HWC when its last axis can be channels (1, 3 or 4),
      else as CHW; a torch tensor the other way round (CHW first, as torchvision), so a
      ``[3, H, 4]`` tensor is a 3-channel image of width 4. Tensors of any float dtype (bf16 too)
      and on any device are accepted.
    * A user mistake raises ``FileNotFoundError`` (missing path) or ``ValueError`` naming the input
      and what is wrong (unreadable or truncated file, bad shape, dtype or value range, zero side).
    """
    if isinstance(image, (str, Path)):
        path = Path(image)
        if not path.exists():
            raise FileNotFoundError(f"image file not found: {path}")
        if path.is_dir():
            raise ValueError(f"{path} is a folder, not an image file")
        regular_file("image", path)            # a FIFO or a device would block or never end: refused unread
        try:
            with Image.open(path) as im:
                n_frames = getattr(im, "n_frames", 1)
                im.seek(0)
                im.load()
                image = im.copy()
                exif = im.getexif()
        except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
            raise ValueError(f"{path} is not a readable image (truncated, corrupt or not an image): {e}") from None
        if n_frames > 1:
            warnings.warn(f"{path} is animated ({n_frames} frames): only the first frame is used",
                          UserWarning, stacklevel=2)
        image = _exif_upright(image, exif)
    elif isinstance(image, Image.Image) and image.format:
        # a PIL image straight from Image.open (not yet decoded): treat it as its file would be treated
        name = getattr(image, "filename", "") or f"the {image.format} image"
        try:
            image.load()
        except (OSError, SyntaxError, ValueError) as e:
            raise ValueError(f"{name} is not a readable image (truncated, corrupt or not an image): {e}") from None
        if getattr(image, "n_frames", 1) > 1:
            warnings.warn(f"{name} is animated ({image.n_frames} frames): frame {image.tell()} "
                          "(the current one) is used", UserWarning, stacklevel=2)
        image = _exif_upright(image, image.getexif())
    from_tensor = isinstance(image, torch.Tensor)
    if from_tensor:
        t = image.detach()
        if t.is_floating_point() and t.dtype not in (torch.float16, torch.float32, torch.float64):
            t = t.float()                                   # bf16, fp8 …: numpy has no such dtype
        image = t.cpu().numpy()
    if isinstance(image, np.ndarray):
        image = _array_to_pil(image, prefer_chw=from_tensor)
    if not isinstance(image, Image.Image):
        raise ValueError(f"expected a path, PIL image, numpy array or tensor, got {type(image).__name__}")
    if image.width < 1 or image.height < 1:
        raise ValueError(f"image has a zero side: size {image.width}x{image.height}")
    return _mode_to_rgb(image)


def _exif_upright(image: Image.Image, exif) -> Image.Image:
    """Apply an EXIF orientation other than 1 (the image is transposed, the tag dropped)."""
    if exif is None or exif.get(274, 1) in (1, None):
        return image
    from PIL import ImageOps
    try:
        return ImageOps.exif_transpose(image)
    except Exception as e:                                  # a malformed EXIF block
        warnings.warn(f"ignoring an unusable EXIF orientation ({e})", UserWarning, stacklevel=3)
        return image


def _mode_to_rgb(im: Image.Image) -> Image.Image:
    if im.mode == "RGB":
        return im
    if im.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        a = np.asarray(im, dtype=np.float64)
        hi = 65535.0 if im.mode.startswith("I;16") else max(float(a.max()), 1.0)
        if im.mode == "F" and a.max() <= 1.0:
            hi = 1.0
        g = np.clip(a / hi * 255.0, 0, 255).astype(np.uint8)
        return Image.fromarray(g).convert("RGB")
    if im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info):
        rgba = im.convert("RGBA")
        bg = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(bg, rgba).convert("RGB")
    try:
        return im.convert("RGB")
    except (ValueError, OSError) as e:
        raise ValueError(f"cannot convert a PIL image of mode {im.mode!r} to RGB: {e}") from None


def _array_to_pil(a: np.ndarray, prefer_chw: bool = False) -> Image.Image:
    if a.ndim == 2:
        a = a[..., None]
    if a.ndim != 3:
        raise ValueError(f"an image array must be HW, HWC or CHW, got shape {tuple(a.shape)}")
    chw = a.shape[0] in (1, 3, 4) and (prefer_chw or a.shape[-1] not in (1, 3, 4))
    if chw:
        a = np.moveaxis(a, 0, -1)           # CHW -> HWC
    if a.shape[-1] not in (1, 3, 4):
        raise ValueError(f"cannot tell the channel axis of an image array of shape {tuple(a.shape)}")
    if a.shape[0] < 1 or a.shape[1] < 1:
        raise ValueError(f"image has a zero side: array shape {tuple(a.shape)}")
    if a.dtype == np.uint8:
        u8 = a
    elif np.issubdtype(a.dtype, np.floating):
        if not np.isfinite(a).all():
            raise ValueError("image array contains NaN or infinite values")
        if a.min() < 0 or a.max() > 1:
            raise ValueError(f"float image arrays must lie in [0, 1], got range [{a.min():.3g}, {a.max():.3g}]")
        u8 = np.round(a * 255).astype(np.uint8)
    elif np.issubdtype(a.dtype, np.integer) or a.dtype == bool:
        if a.min() < 0 or a.max() > 255:
            raise ValueError(f"integer image arrays must lie in [0, 255], got range [{a.min()}, {a.max()}]")
        u8 = a.astype(np.uint8) * (255 if a.dtype == bool else 1)
    else:
        raise ValueError(f"unsupported image array dtype {a.dtype}")
    u8 = np.ascontiguousarray(u8[..., 0] if u8.shape[-1] == 1 else u8)
    return _mode_to_rgb(Image.fromarray(u8))      # HW -> L, HWx3 -> RGB, HWx4 -> RGBA


def to_tensor(image: Image.Image, normalize: bool = True) -> torch.Tensor:
    """RGB PIL image -> float tensor ``[3, H, W]``, CLIP-normalised when ``normalize``."""
    x = torch.from_numpy(np.asarray(image, dtype=np.float32).copy()).permute(2, 0, 1) / 255.0
    return _normalize(x) if normalize else x
