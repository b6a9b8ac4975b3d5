"""Images for attacks at the original size: reading any `predict()`-like source, tensors to and from uint8 images, and
Ultralytics' letterbox and classification crop written with differentiable torch ops (so an attack's gradient reaches
every original pixel)."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import torch
import torch.nn.functional as F

PAD = 114 / 255  # Ultralytics' letterbox gray


def letterbox(images: torch.Tensor, params: dict) -> torch.Tensor:
    """Resize and pad images exactly where Ultralytics' `LetterBox` does, with differentiable torch ops.

    Bilinear resizing with half-pixel centers (`align_corners=False`, no antialiasing) is what `cv2.INTER_LINEAR`
    computes; the padding is Ultralytics' gray 114.

    Args:
        images (torch.Tensor): (B, 3, H, W) float images in [0, 1], all of the size `params` was computed for.
        params (dict): `LetterBox.get_params` output: `new_unpad` (w, h), `top`, `bottom`, `left`, `right`.

    Returns:
        (torch.Tensor): (B, 3, h + top + bottom, w + left + right) letterboxed images.
    """
    w, h = params["new_unpad"]
    if tuple(images.shape[-2:]) != (h, w):
        images = F.interpolate(images, size=(h, w), mode="bilinear", align_corners=False)
    return F.pad(images, (params["left"], params["right"], params["top"], params["bottom"]), value=PAD)


def center_crop(images: torch.Tensor, size: int) -> torch.Tensor:
    """Resize the shorter side to `size` and crop the center square, as Ultralytics' `classify_transforms`, in torch.

    The resize is bilinear with antialiasing, as torchvision's `Resize` on the PIL images the classification
    predictor feeds it (to within its uint8 rounding); the long side is `int(size * long / short)` and the crop offset
    `round((side - size) / 2)`, as torchvision computes them.

    Args:
        images (torch.Tensor): (B, 3, H, W) float images in [0, 1].
        size (int): The classifier's input size.

    Returns:
        (torch.Tensor): (B, 3, size, size) images.
    """
    h, w = images.shape[-2:]
    new = (size, int(size * w / h)) if h <= w else (int(size * h / w), size)
    if new != (h, w):
        images = F.interpolate(images, size=new, mode="bilinear", align_corners=False, antialias=True)
    top, left = round((new[0] - size) / 2), round((new[1] - size) / 2)
    return images[..., top : top + size, left : left + size]


def to_tensor(image: np.ndarray, device) -> torch.Tensor:
    """Return a (H, W, 3) uint8 BGR image as a (1, 3, H, W) float RGB tensor in [0, 1] on `device`."""
    return torch.from_numpy(np.ascontiguousarray(image[..., ::-1].transpose(2, 0, 1))).to(device)[None].float() / 255


def to_image(x: torch.Tensor) -> np.ndarray:
    """Return a (1, 3, H, W) RGB tensor in [0, 1] as a (H, W, 3) uint8 BGR image, rounded to the nearest level."""
    return np.ascontiguousarray((x[0] * 255).round().byte().permute(1, 2, 0).flip(-1).cpu().numpy())


def iter_images(source):
    """Check `source` and return an iterator of `(path, BGR uint8 image)`, reading each file when it is reached.

    Raises:
        ValueError: For an empty source, a video or stream, an unsupported type, or (on iteration) an unreadable image.
        FileNotFoundError: If a path does not exist or a folder holds no images.
    """
    from PIL import Image
    from ultralytics.data.loaders import LoadImagesAndVideos
    from ultralytics.data.utils import IMG_FORMATS

    if source is None:
        raise ValueError("source= is required: an image, a folder, a glob, a list of images, arrays or a tensor")
    items = list(source) if isinstance(source, (list, tuple)) else [source]
    if isinstance(source, torch.Tensor):
        items = list(source[None] if source.ndim == 3 else source)
    if not items:
        raise ValueError(f"source={source!r} is empty: give at least one image, folder, array or tensor")
    entries, count = [], 0  # (path, None for a file read later | in-memory image)
    for s in items:
        if isinstance(s, (str, Path)):
            if "://" in str(s):
                raise ValueError(f"source={s} is a URL or stream: attack works offline on local image files")
            try:
                loader = LoadImagesAndVideos(str(s))
            except FileNotFoundError as e:
                raise FileNotFoundError(f"source={s}: {str(e).split(' Supported formats')[0]}") from None
            if any(loader.video_flag):
                videos = [f for f, v in zip(loader.files, loader.video_flag) if v]
                raise ValueError(f"source={s} holds videos {videos[:3]}: attack works on images {sorted(IMG_FORMATS)}")
            entries += [(f, None) for f in loader.files]
            continue
        if isinstance(s, Image.Image):
            s = np.asarray(s.convert("RGB"))[..., ::-1]
        elif isinstance(s, torch.Tensor):
            if s.ndim != 3 or s.shape[0] != 3 or not s.is_floating_point() or s.min() < 0 or s.max() > 1:
                raise ValueError(f"tensor source of shape {tuple(s.shape)}: give RGB (B, 3, H, W) floats in [0, 1]")
            s = (s.detach() * 255).round().byte().permute(1, 2, 0).flip(-1).cpu().numpy()
        if not isinstance(s, np.ndarray) or s.dtype != np.uint8 or s.ndim != 3 or s.shape[2] != 3:
            raise ValueError(
                f"source item {type(s).__name__} {getattr(s, 'shape', '')} is not supported: give image paths, "
                "(H, W, 3) uint8 BGR arrays, PIL images or RGB float tensors in [0, 1]"
            )
        entries.append((f"image{count}.jpg", np.ascontiguousarray(s)))
        count += 1
    return _read(entries)


def _read(entries: list):
    """Yield `(path, image)`, reading files with Ultralytics' `imread`; an unreadable file raises ValueError."""
    from ultralytics.utils.patches import imread

    for path, image in entries:
        if image is None:
            image = imread(path, flags=cv2.IMREAD_COLOR)
            if image is None:
                raise ValueError(f"image {path} cannot be read: it is not an image OpenCV can decode; fix or remove it")
        yield path, image
