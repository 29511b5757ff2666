"""A small synthetic dataset, generated deterministically from a seed, laid out like COCO and ADE20K.

Textured backgrounds with a few objects of varied class, shape, size, colour and texture; later objects occlude
earlier ones, and masks and boxes are the visible parts.

- :func:`make_synthetic_coco` writes ``annotations/instances_{train,val}2017.json`` with boxes, areas and RLE
  instance masks, plus ``train2017/`` and ``val2017/`` JPEGs (the COCO 2017 layout).
- :func:`make_synthetic_ade20k` writes ``images/{training,validation}/*.jpg`` and
  ``annotations/{training,validation}/*.png`` (the ``ADEChallengeData2016`` layout). Label 0 is "unlabelled"
  (a thin band around each object, as in ADE20K's annotation gaps), so ``reduce_zero_label=True`` maps it to
  the ignore index 255 and classes 1..K to 0..K-1.
"""
# why synthetic: the demo and tests run on machines that cannot download a real dataset
from __future__ import annotations

import json
import os
import os.path as osp
from typing import Any

import cv2
import numpy as np

#: object classes of both datasets (class index order)
SHAPES = ('disc', 'square', 'triangle', 'ring')
SYNTHETIC_COCO_CLASSES = SHAPES
#: semantic classes after ``reduce_zero_label`` (label value = index + 1 in the PNGs)
SYNTHETIC_ADE_CLASSES = ('background', ) + SHAPES


def _background(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """A textured background: a colour gradient, oriented stripes of random frequency, and pixel noise."""
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    c0, c1 = rng.uniform(40, 215, size=(2, 3))
    t = (xx * rng.uniform(-1, 1) + yy * rng.uniform(-1, 1)) / max(h, w)
    t = (t - t.min()) / (np.ptp(t) + 1e-6)
    img = c0 * (1 - t[..., None]) + c1 * t[..., None]
    theta, freq = rng.uniform(0, np.pi), rng.uniform(0.05, 0.3)
    stripes = np.sin((xx * np.cos(theta) + yy * np.sin(theta)) * freq)
    img += 18 * stripes[..., None] * rng.uniform(0.3, 1.0, size=3)
    img += rng.normal(0, 8, size=img.shape)
    return img


def _texture(rng: np.random.Generator, h: int, w: int, colour: np.ndarray) -> np.ndarray:
    """Object fill: a flat colour with a checkerboard, stripes or noise texture on top."""
    yy, xx = np.mgrid[0:h, 0:w]
    kind = rng.integers(3)
    if kind == 0:
        cell = int(rng.integers(3, 9))
        pattern = ((xx // cell + yy // cell) % 2).astype(np.float32) * 2 - 1
    elif kind == 1:
        pattern = np.sin((xx + yy) * rng.uniform(0.3, 0.9)).astype(np.float32)
    else:
        pattern = rng.normal(0, 1, size=(h, w)).astype(np.float32)
    return colour + 25 * pattern[..., None]


def _shape_mask(rng: np.random.Generator, shape: str, h: int, w: int, cx: int, cy: int, size: int) -> np.ndarray:
    mask = np.zeros((h, w), np.uint8)
    r = size / 2
    if shape == 'disc':
        cv2.ellipse(mask, (cx, cy), (int(r), int(r * rng.uniform(0.7, 1.0))), float(rng.uniform(0, 180)), 0, 360,
                    1, -1)
    elif shape == 'square':
        angle = rng.uniform(0, 90)
        box = cv2.boxPoints(((cx, cy), (size, size * rng.uniform(0.7, 1.0)), angle))
        cv2.fillPoly(mask, [np.round(box).astype(np.int32)], 1)
    elif shape == 'triangle':
        a0 = rng.uniform(0, 2 * np.pi)
        pts = [(cx + r * np.cos(a0 + k * 2 * np.pi / 3), cy + r * np.sin(a0 + k * 2 * np.pi / 3)) for k in range(3)]
        cv2.fillPoly(mask, [np.round(np.array(pts)).astype(np.int32)], 1)
    elif shape == 'ring':
        cv2.circle(mask, (cx, cy), int(r), 1, -1)
        cv2.circle(mask, (cx, cy), max(int(r * 0.5), 1), 0, -1)
    return mask.astype(bool)


def _render(rng: np.random.Generator, h: int, w: int, max_objects: int, min_size: int,
            max_size: int) -> tuple[np.ndarray, list[tuple[int, np.ndarray]]]:
    """Render one image; returns (uint8 BGR image, list of (class index, visible bool mask))."""
    img = _background(rng, h, w)
    owner = np.full((h, w), -1, np.int32)
    objects: list[int] = []
    for k in range(int(rng.integers(1, max_objects + 1))):
        cls = int(rng.integers(len(SHAPES)))
        size = int(rng.integers(min_size, max_size + 1))
        cx, cy = int(rng.integers(size // 3, w - size // 3)), int(rng.integers(size // 3, h - size // 3))
        mask = _shape_mask(rng, SHAPES[cls], h, w, cx, cy, size)
        if mask.sum() < 16:
            continue
        colour = rng.uniform(0, 255, size=3)
        img[mask] = _texture(rng, h, w, colour)[mask]
        owner[mask] = len(objects)
        objects.append(cls)
    img = np.clip(img, 0, 255).astype(np.uint8)
    visible = [(cls, owner == i) for i, cls in enumerate(objects)]
    return img, [(c, m) for c, m in visible if m.sum() >= 16]


def _rle(mask: np.ndarray) -> dict[str, Any]:
    from pycocotools import mask as mask_utils
    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    rle['counts'] = rle['counts'].decode('ascii')
    return rle


def make_synthetic_coco(root: str | os.PathLike, seed: int = 0, num_train: int = 64, num_val: int = 16,
                        img_size: tuple[int, int] = (192, 256), max_objects: int = 4, min_size: int = 24,
                        max_size: int = 80) -> dict[str, str]:
    """Write a COCO-format instance dataset under ``root``; returns ``{split: annotation file}``.

    The same ``seed`` always gives the same files.

    Args:
        img_size: (height, width) in pixels; ``min_size`` / ``max_size``: object sizes in pixels.
    """
    from pycocotools import mask as mask_utils
    h, w = img_size
    out: dict[str, str] = {}
    for split, num, split_seed in (('train2017', num_train, seed), ('val2017', num_val, seed + 1_000_003)):
        rng = np.random.default_rng(split_seed)
        os.makedirs(osp.join(root, split), exist_ok=True)
        images: list[dict] = []
        annotations: list[dict] = []
        for i in range(num):
            img, objects = _render(rng, h, w, max_objects, min_size, max_size)
            name = f'{i:06d}.jpg'
            cv2.imwrite(osp.join(root, split, name), img, [cv2.IMWRITE_JPEG_QUALITY, 95])
            images.append(dict(id=i + 1, file_name=name, height=h, width=w))
            for cls, mask in objects:
                rle = _rle(mask)
                x, y, bw, bh = (float(v) for v in mask_utils.toBbox(rle))
                annotations.append(dict(id=len(annotations) + 1, image_id=i + 1, category_id=cls + 1,
                                        segmentation=rle, area=float(mask.sum()), bbox=[x, y, bw, bh],
                                        iscrowd=0))
        coco = dict(info=dict(description=f'mmsparse synthetic COCO-format dataset (seed {seed})'),
                    images=images, annotations=annotations,
                    categories=[dict(id=k + 1, name=n, supercategory='shape') for k, n in enumerate(SHAPES)])
        os.makedirs(osp.join(root, 'annotations'), exist_ok=True)
        ann_file = osp.join(root, 'annotations', f'instances_{split}.json')
        with open(ann_file, 'w') as f:
            json.dump(coco, f)
        out[split] = ann_file
    return out


def make_synthetic_ade20k(root: str | os.PathLike, seed: int = 0, num_train: int = 64, num_val: int = 16,
                          img_size: tuple[int, int] = (160, 160), max_objects: int = 5, min_size: int = 24,
                          max_size: int = 72) -> dict[str, tuple[str, str]]:
    """Write an ADE20K-format semantic dataset under ``root`` (the ``ADEChallengeData2016`` folder).

    Label PNGs hold 0 for unlabelled pixels, 1 for background and 2..5 for the shapes; returns
    ``{split: (image dir, annotation dir)}``.

    Args:
        img_size: (height, width) in pixels; ``min_size`` / ``max_size``: object sizes in pixels.
    """
    h, w = img_size
    out: dict[str, tuple[str, str]] = {}
    kernel = np.ones((3, 3), np.uint8)
    for split, num, split_seed in (('training', num_train, seed), ('validation', num_val, seed + 1_000_003)):
        rng = np.random.default_rng(split_seed)
        img_dir, ann_dir = osp.join(root, 'images', split), osp.join(root, 'annotations', split)
        os.makedirs(img_dir, exist_ok=True)
        os.makedirs(ann_dir, exist_ok=True)
        for i in range(num):
            img, objects = _render(rng, h, w, max_objects, min_size, max_size)
            label = np.ones((h, w), np.uint8)
            for cls, mask in objects:
                label[mask] = cls + 2
            # unlabelled band along object boundaries, like the gaps in ADE20K's annotations
            edges = cv2.morphologyEx(label, cv2.MORPH_GRADIENT, kernel) > 0
            label[edges] = 0
            name = f'ADE_{split[:5]}_{i:08d}'
            cv2.imwrite(osp.join(img_dir, name + '.jpg'), img, [cv2.IMWRITE_JPEG_QUALITY, 95])
            cv2.imwrite(osp.join(ann_dir, name + '.png'), label)
        out[split] = (img_dir, ann_dir)
    return out
