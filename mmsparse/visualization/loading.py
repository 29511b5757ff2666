"""Backbone, image and query points for the attention pictures, from an mmdet / mmseg / mmsparse config."""
import os.path as osp

import numpy as np
import torch

__all__ = ['load_backbone', 'read_image', 'resize_for_model', 'preprocess', 'default_points', 'scale_points']

IMAGENET_MEAN = (123.675, 116.28, 103.53)
IMAGENET_STD = (58.395, 57.12, 57.375)


def load_backbone(config, checkpoint=None, cfg_options=None):
    """Build ``model.backbone`` of a config in eval mode, with random weights or a checkpoint's.

    :func:`mmsparse.apis.build_model` with ``part='backbone'``, checked to hold an mmsparse operator.

    Args:
        config (str | Config): an mmsparse config or a stock mmdet / mmseg one importing mmsparse through
            ``custom_imports``.
        checkpoint (str, optional): a full mmdet / mmseg checkpoint (``backbone.*`` keys), an mmsparse
            backbone file or the authors' raw one. None: the backbone's own random initialisation.
        cfg_options (dict, optional): merged into the config first.

    Returns:
        tuple: ``(backbone, cfg)``.

    Raises:
        ValueError: the config has no ``model.backbone``, the backbone holds no mmsparse operator, or the
            checkpoint does not fit it.
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


def read_image(path):
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


def resize_for_model(img, long_side=448, multiple=32):
    """Resize so the longer side is about ``long_side`` and both sides are multiples of ``multiple``.

    Multiples of 32 keep every stage of a stride-32 pyramid exact (no ceil rounding between image pixels and
    feature cells). ``long_side=None`` keeps the size up to that rounding.
    """
    import mmcv
    hgt, wdt = img.shape[:2]
    s = 1.0 if long_side is None else long_side / max(hgt, wdt)
    new_h = max(multiple, int(round(hgt * s / multiple)) * multiple)
    new_w = max(multiple, int(round(wdt * s / multiple)) * multiple)
    if (new_h, new_w) == (hgt, wdt):
        return img
    return mmcv.imresize(img, (new_w, new_h), interpolation='bilinear')


def preprocess(img, cfg=None):
    """BGR uint8 (H, W, 3) -> (1, 3, H, W) float tensor, normalised as the config's ``data_preprocessor``.

    Uses ``model.data_preprocessor.{mean, std, bgr_to_rgb}`` when the config has one (ImageNet RGB
    statistics without a data_preprocessor).
    """
    dp = ((cfg or {}).get('model') or {}).get('data_preprocessor') or {}
    mean = np.array(dp.get('mean', IMAGENET_MEAN), np.float32)
    std = np.array(dp.get('std', IMAGENET_STD), np.float32)
    rgb = bool(dp.get('bgr_to_rgb', False)) if dp else True  # mmdet / mmseg default: False
    x = img[:, :, ::-1] if rgb else img
    x = (x.astype(np.float32) - mean) / std
    return torch.from_numpy(np.ascontiguousarray(x.transpose(2, 0, 1)))[None]


def default_points(img, n_salient=2, margin=0.1):
    """Query points ``[(x, y), ...]``: the image centre, then the strongest edge of the ``n_salient`` most
    textured quadrants (gradient magnitude of the blurred grey image; a ``margin`` of the size along the
    borders and around the centre lines is excluded, so the points are apart)."""
    import cv2
    hgt, wdt = img.shape[:2]
    points = [(wdt // 2, hgt // 2)]
    grey = cv2.GaussianBlur(cv2.cvtColor(img, cv2.COLOR_BGR2GRAY).astype(np.float32), (0, 0), 3)
    mag = np.hypot(cv2.Sobel(grey, cv2.CV_32F, 1, 0), cv2.Sobel(grey, cv2.CV_32F, 0, 1))
    my, mx = int(hgt * margin), int(wdt * margin)
    best = []
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


def scale_points(points, from_hw, to_hw):
    """Points on an image of size ``from_hw`` -> the same places on ``to_hw``; ValueError when outside."""
    (fh, fw), (th, tw) = from_hw, to_hw
    out = []
    for x, y in points:
        if not (0 <= x < fw and 0 <= y < fh):
            raise ValueError(f'point ({x}, {y}) is outside the image ({fw}x{fh} pixels, x in [0, {fw - 1}], '
                             f'y in [0, {fh - 1}])')
        out.append((min(int(x * tw / fw), tw - 1), min(int(y * th / fh), th - 1)))
    return out
