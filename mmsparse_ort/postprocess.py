"""The graph's outputs back to the original image: label maps (mmseg) and detections (mmdet), in numpy.

Segmentation follows mmseg's ``EncoderDecoder.postprocess_result``: logits cropped to the un-padded region,
resized bilinearly to the original size (PyTorch's ``interpolate`` arithmetic), then ``argmax`` (or a sigmoid
threshold for a one-channel head). Detections follow mmdet's rescaling: boxes divided by the resize's scale
factors and clipped to the image; full-size masks cropped and resized bilinearly (OpenCV), 28 x 28 RoI masks pasted
into their boxes as mmdet's ``_do_paste_mask`` does; both thresholded with ``>=``.
"""
from __future__ import annotations

import math

import cv2
import numpy as np

from .preprocess import ImageInfo


def _taps(in_size: int, out_size: int, align_corners: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Source indices ``i0``, ``i1`` and the weight of ``i1`` for each output index (PyTorch's, in float32)."""
    dst = np.arange(out_size, dtype=np.float32)
    if align_corners:
        scale = np.float32((in_size - 1) / (out_size - 1)) if out_size > 1 else np.float32(0.)
        src = scale * dst
    else:
        scale = np.float32(in_size) / np.float32(out_size)
        src = np.maximum(scale * (dst + np.float32(0.5)) - np.float32(0.5), np.float32(0.))
    i0 = np.minimum(src.astype(np.int64), in_size - 1)
    i1 = np.minimum(i0 + 1, in_size - 1)
    return i0, i1, (src - i0.astype(np.float32)).astype(np.float32)


def resize_bilinear(maps: np.ndarray, size: tuple[int, int], align_corners: bool = False) -> np.ndarray:
    """``maps`` ``[C, H, W]`` resized to ``size`` ``(H', W')`` as ``F.interpolate(mode='bilinear')`` does."""
    maps = np.asarray(maps, dtype=np.float32)
    y0, y1, wy = _taps(maps.shape[1], size[0], align_corners)
    x0, x1, wx = _taps(maps.shape[2], size[1], align_corners)
    rows0, rows1 = maps[:, y0], maps[:, y1]
    one = np.float32(1.)
    # along the width first, then the height, as PyTorch's kernel nests them
    top = (one - wx) * rows0[:, :, x0] + wx * rows0[:, :, x1]
    bottom = (one - wx) * rows1[:, :, x0] + wx * rows1[:, :, x1]
    return (one - wy)[:, None] * top + wy[:, None] * bottom


def label_map(logits: np.ndarray, info: ImageInfo, align_corners: bool = False,
              threshold: float | None = None) -> np.ndarray:
    """The ``[H, W]`` int64 prediction at the original size from one image's ``[C, H', W']`` logits."""
    h, w = info.img_shape
    full = resize_bilinear(logits[:, :h, :w], info.ori_shape, align_corners)
    if full.shape[0] > 1:
        return full.argmax(axis=0)
    return (1. / (1. + np.exp(-full[0])) > (0.3 if threshold is None else threshold)).astype(np.int64)


def rescale_boxes(boxes: np.ndarray, info: ImageInfo) -> np.ndarray:
    """``[N, 4]`` boxes in graph-input pixels to the original image: divided by the scale factors, clipped."""
    factors = np.asarray(info.scale_factor * 2, dtype=np.float32)
    out = np.asarray(boxes, dtype=np.float32).reshape(-1, 4) / factors
    h, w = info.ori_shape
    out[:, 0::2] = out[:, 0::2].clip(0, w)
    out[:, 1::2] = out[:, 1::2].clip(0, h)
    return out


def full_masks(masks: np.ndarray, info: ImageInfo, threshold: float) -> np.ndarray:
    """``[N, H', W']`` masks on the graph input to ``[N, H, W]`` bool masks on the original image."""
    h, w = info.img_shape
    out = np.zeros((len(masks), *info.ori_shape), dtype=bool)
    # OpenCV's INTER_LINEAR maps pixel centres as interpolate(align_corners=False) does (values within ~3e-5 of
    # resize_bilinear's) and is over ten times faster on a hundred full-size masks
    size = (int(info.ori_shape[1]), int(info.ori_shape[0]))
    for i, mask in enumerate(np.asarray(masks[:, :h, :w], dtype=np.float32)):
        out[i] = cv2.resize(mask, size, interpolation=cv2.INTER_LINEAR) >= threshold
    return out


def _sample_axis(coords: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Bilinear taps of ``coords`` on an axis of ``size`` samples; out-of-range taps get weight 0 (zero padding)."""
    lo = np.floor(coords)
    frac = coords - lo
    lo = lo.astype(np.int64)
    hi = lo + 1
    w_lo = np.where((lo >= 0) & (lo < size), 1. - frac, 0.)
    w_hi = np.where((hi >= 0) & (hi < size), frac, 0.)
    return lo.clip(0, size - 1), hi.clip(0, size - 1), w_lo, w_hi


def paste_masks(masks: np.ndarray, boxes: np.ndarray, shape: tuple[int, int], threshold: float) -> np.ndarray:
    """RoI masks ``[N, M, M]`` (probabilities) pasted into ``boxes`` ``[N, 4]`` of an image of ``shape`` (H, W).

    Each pixel centre samples its mask bilinearly with zeros outside (``grid_sample``, ``align_corners=False``),
    within one pixel around the box, then ``>= threshold``.
    """
    h, w = shape
    out = np.zeros((len(masks), h, w), dtype=bool)
    for i, (mask, (bx0, by0, bx1, by1)) in enumerate(zip(np.asarray(masks, dtype=np.float32), boxes)):
        x_start, y_start = max(math.floor(bx0) - 1, 0), max(math.floor(by0) - 1, 0)
        x_end, y_end = min(math.ceil(bx1) + 1, w), min(math.ceil(by1) + 1, h)
        if x_end <= x_start or y_end <= y_start:
            continue
        mh, mw = mask.shape
        xs = (np.arange(x_start, x_end) + 0.5 - bx0) / max(bx1 - bx0, 1e-6) * mw - 0.5
        ys = (np.arange(y_start, y_end) + 0.5 - by0) / max(by1 - by0, 1e-6) * mh - 0.5
        xl, xh, wxl, wxh = _sample_axis(xs, mw)
        yl, yh, wyl, wyh = _sample_axis(ys, mh)
        cols = mask[:, xl] * wxl + mask[:, xh] * wxh  # [M, w']
        region = wyl[:, None] * cols[yl] + wyh[:, None] * cols[yh]
        out[i, y_start:y_end, x_start:x_end] = region >= threshold
    return out
