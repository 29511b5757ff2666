"""Backbone, image and query points for the attention pictures, from an mmdet / mmseg / mmsparse config."""
from __future__ import annotations

import os.path as osp
from typing import Any, Iterable

import numpy as np
import torch

__all__ = ['load_backbone', 'read_image', 'resize_for_model', 'preprocess', 'default_points', 'scale_points']

IMAGENET_MEAN = (123.675, 116.28, 103.53)
IMAGENET_STD = (58.395, 57.12, 57.375)


def load_backbone(config: Any, checkpoint: str | None = None,
                  cfg_options: dict[str, Any] | None = None) -> tuple[torch.nn.Module, Any]:
    """``(backbone, cfg)``: ``model.backbone`` of a config, in eval mode, with random or checkpoint weights.

    Args:
        config: path or Config; an mmsparse config or an mmdet / mmseg one importing mmsparse through
            ``custom_imports``.
        checkpoint: a full mmdet / mmseg checkpoint (``backbone.*`` keys), an mmsparse backbone file or the
            authors' raw one; None keeps the random initialisation.
        cfg_options: merged into the config first.

    Raises:
        ValueError: no ``model.backbone``, no mmsparse operator in it, or a checkpoint that does not fit.
    """
    from mmsparse.apis import build_model, load_config
    from .attention import OPERATOR_TYPES

    cfg = load_config(config, cfg_options)
    backbone_cfg = (cfg.get('model') or {}).get('backbone')
    if not backbone_cfg:
        raise ValueError(f'{config}: the config has no model.backbone')
    backbone = build_model(cfg, checkpoint, part='backbone')
    if not any(isinstance(m, OPERATOR_TYPES) for m in backbone.modules()):
        names = ', '.join(t.__name__ for t in OPERATOR_TYPES)
        raise ValueError(f'{config}: model.backbone ({backbone_cfg.get("type")}) holds none of mmsparse\'s '
                         f'attention operators ({names}); use a BiFormer, CloFormer or STViT config, or a '
                         'backbone with mmsparse plugins (operators in necks are not drawn)')
    return backbone, cfg


def read_image(path: str) -> np.ndarray:
    """(H, W, 3) uint8 BGR image; FileNotFoundError / ValueError with the path when it cannot be read."""
    import mmcv
    if not osp.isfile(path):
        raise FileNotFoundError(f'image: no such file: {path}')
    try:
        img = mmcv.imread(path, flag='color', channel_order='bgr')
    except Exception as err:  # mmcv raises various errors on non-images
        raise ValueError(f'image: cannot decode {path}: {err}') from err
    if img is None:
        raise ValueError(f'image: cannot decode {path}')
    return img


def resize_for_model(img: np.ndarray, long_side: int | None = 448, multiple: int = 32) -> np.ndarray:
    """Resize so the longer side is about ``long_side`` (None: kept) and both sides are multiples of ``multiple``."""
    # why 32: every stage of a stride-32 pyramid then maps image pixels to feature cells exactly
    import mmcv
    hgt, wdt = img.shape[:2]
    s = 1.0 if long_side is None else long_side / max(hgt, wdt)
    new_h = max(multiple, int(round(hgt * s / multiple)) * multiple)
    new_w = max(multiple, int(round(wdt * s / multiple)) * multiple)
    if (new_h, new_w) == (hgt, wdt):
        return img
    return mmcv.imresize(img, (new_w, new_h), interpolation='bilinear')


def preprocess(img: np.ndarray, cfg: Any = None) -> torch.Tensor:
    """BGR uint8 (H, W, 3) -> (1, 3, H, W) float, normalised by ``model.data_preprocessor`` (mean, std, bgr_to_rgb).

    Without a data_preprocessor: ImageNet RGB statistics.
    """
    dp = ((cfg or {}).get('model') or {}).get('data_preprocessor') or {}
    mean = np.array(dp.get('mean', IMAGENET_MEAN), np.float32)
    std = np.array(dp.get('std', IMAGENET_STD), np.float32)
    rgb = bool(dp.get('bgr_to_rgb', False)) if dp else True  # mmdet / mmseg default: False
    x = img[:, :, ::-1] if rgb else img
    x = (x.astype(np.float32) - mean) / std
    return torch.from_numpy(np.ascontiguousarray(x.transpose(2, 0, 1)))[None]


def default_points(img: np.ndarray, n_salient: int = 2, margin: float = 0.1) -> list[tuple[int, int]]:
    """Query points ``(x, y)``: the image centre, then the strongest edge of the ``n_salient`` most textured quadrants.

    ``margin`` (fraction of the size) along the borders and around the centre lines is excluded, so the points
    are apart.
    """
    import cv2
    hgt, wdt = img.shape[:2]
    points = [(wdt // 2, hgt // 2)]
    grey = cv2.GaussianBlur(cv2.cvtColor(img, cv2.COLOR_BGR2GRAY).astype(np.float32), (0, 0), 3)
    mag = np.hypot(cv2.Sobel(grey, cv2.CV_32F, 1, 0), cv2.Sobel(grey, cv2.CV_32F, 0, 1))
    my, mx = int(hgt * margin), int(wdt * margin)
    best: list[tuple[float, tuple[int, int]]] = []
    # quadrants without the outer margin and without a band of the same width around the centre lines
    for y0, y1 in ((my, hgt // 2 - my), (hgt // 2 + my, hgt - my)):
        for x0, x1 in ((mx, wdt // 2 - mx), (wdt // 2 + mx, wdt - mx)):
            patch = mag[y0:y1, x0:x1]
            if patch.size == 0:
                continue
            py, px = np.unravel_index(int(patch.argmax()), patch.shape)
            best.append((float(patch[py, px]), (int(x0 + px), int(y0 + py))))
    best.sort(key=lambda t: -t[0])
    points += [p for _, p in best[:n_salient]]
    return points


def scale_points(points: Iterable[tuple[int, int]], from_hw: tuple[int, int],
                 to_hw: tuple[int, int]) -> list[tuple[int, int]]:
    """Points on an image of size ``from_hw`` -> the same places on ``to_hw``; ValueError when outside."""
    (fh, fw), (th, tw) = from_hw, to_hw
    out: list[tuple[int, int]] = []
    for x, y in points:
        if not (0 <= x < fw and 0 <= y < fh):
            raise ValueError(f'point ({x}, {y}) is outside the image ({fw}x{fh} pixels, x in [0, {fw - 1}], '
                             f'y in [0, {fh - 1}])')
        out.append((min(int(x * tw / fw), tw - 1), min(int(y * th / fh), th - 1)))
    return out
