"""An image file to the graph's ``input``, as the config's test pipeline and data preprocessor make it.

Reproduces mmcv's ``LoadImageFromFile`` (OpenCV decoding, BGR), ``Resize`` (``imrescale`` / ``imresize`` with the
``cv2`` backend: sizes rounded half up, OpenCV interpolation), and mmengine's / mmseg's data preprocessors: BGR to
RGB, ``(x - mean) / std`` in float32, then bottom-right padding with ``pad_val`` to a multiple of ``size_divisor``
or to ``size``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Sequence

import cv2
import numpy as np

INTERPOLATIONS = {
    'nearest': cv2.INTER_NEAREST,
    'bilinear': cv2.INTER_LINEAR,
    'bicubic': cv2.INTER_CUBIC,
    'area': cv2.INTER_AREA,
    'lanczos': cv2.INTER_LANCZOS4
}


@dataclass
class ImageInfo:
    """Sizes of one image through preprocessing, ``(H, W)``; ``scale_factor`` is ``(w_scale, h_scale)``."""

    ori_shape: tuple[int, int]
    img_shape: tuple[int, int]
    pad_shape: tuple[int, int]
    scale_factor: tuple[float, float]


def read_image(path: str) -> np.ndarray:
    """The image at ``path`` as BGR uint8 ``[H, W, 3]`` (OpenCV's colour decoding, as mmcv's default loader)."""
    data = np.fromfile(path, dtype=np.uint8)
    img = cv2.imdecode(data, cv2.IMREAD_COLOR) if data.size else None
    if img is None:
        raise ValueError(f'input: {path} is not an image OpenCV can read')
    return img


def _half_up(value: float) -> int:
    return int(value + 0.5)


def rescale_size(width: int, height: int, scale: Sequence[int]) -> tuple[int, int]:
    """mmcv's ``rescale_size``: ``(w, h)`` as large as fits in ``scale`` (either orientation), ratio kept."""
    factor = min(max(scale) / max(height, width), min(scale) / min(height, width))
    return _half_up(width * float(factor)), _half_up(height * float(factor))


def resize(img: np.ndarray, spec: dict[str, Any] | None) -> tuple[np.ndarray, tuple[float, float]]:
    """``img`` resized as the test pipeline's ``Resize`` (``spec``, ``None``: unchanged); and ``(w_scale, h_scale)``."""
    if not spec:
        return img, (1., 1.)
    h, w = img.shape[:2]
    scale = spec.get('scale')
    if scale is None:  # Resize(scale_factor=...): the target size is the scaled size
        fx, fy = spec['scale_factor']
        scale = (_half_up(w * float(fx)), _half_up(h * float(fy)))
    size = rescale_size(w, h, scale) if spec.get('keep_ratio') else (int(scale[0]), int(scale[1]))
    interpolation = spec.get('interpolation', 'bilinear')
    if interpolation not in INTERPOLATIONS:
        raise ValueError(f'resize interpolation must be one of {sorted(INTERPOLATIONS)}, got {interpolation!r}')
    out = cv2.resize(img, size, interpolation=INTERPOLATIONS[interpolation])
    return out, (out.shape[1] / w, out.shape[0] / h)


def padded_shape(shape: tuple[int, int], pad: dict[str, Any] | None) -> tuple[int, int]:
    """``(H, W)`` after the data preprocessor's test-time padding (``size`` first, else ``size_divisor``)."""
    h, w = shape
    if not pad:
        return h, w
    if pad.get('size'):
        return max(h, int(pad['size'][0])), max(w, int(pad['size'][1]))
    divisor = pad.get('size_divisor') or 1
    return int(math.ceil(h / divisor)) * divisor, int(math.ceil(w / divisor)) * divisor


def preprocess(img: np.ndarray, spec: dict[str, Any]) -> tuple[np.ndarray, ImageInfo]:
    """The graph input ``[1, 3, H, W]`` float32 for the BGR image ``img``, and its :class:`ImageInfo`.

    ``spec``: the metadata's ``preprocess`` (``mean``, ``std``, ``bgr_to_rgb``, ``resize``, ``pad``).
    """
    resized, factor = resize(img, spec.get('resize'))
    if spec.get('bgr_to_rgb'):
        resized = resized[..., ::-1]
    mean = np.asarray(spec.get('mean', (0., 0., 0.)), dtype=np.float32)
    std = np.asarray(spec.get('std', (1., 1., 1.)), dtype=np.float32)
    normed = (resized.astype(np.float32) - mean) / std
    h, w = normed.shape[:2]
    pad_h, pad_w = padded_shape((h, w), spec.get('pad'))
    tensor = np.full((1, 3, pad_h, pad_w), float((spec.get('pad') or {}).get('pad_val', 0.)), dtype=np.float32)
    tensor[0, :, :h, :w] = normed.transpose(2, 0, 1)
    info = ImageInfo(ori_shape=(img.shape[0], img.shape[1]), img_shape=(h, w), pad_shape=(pad_h, pad_w),
                     scale_factor=factor)
    return tensor, info
