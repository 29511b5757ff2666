"""Real, hand-annotated images as COCO-format datasets: tree crowns (boxes) and cell nuclei (instance masks).

The images ship inside two wheels on the Python package index, which are downloaded with pip and read as zip
archives (the packages are never installed):

- ``deepforest==2.1.0`` (``deepforest/data/``): aerial RGB images with Pascal VOC boxes of tree crowns. Two
  Yellowstone crops (NEON site YELL; 574 and 279 trees) and two 400 x 400 images of other sites (OSBS_029: 61,
  SOAP_061: 37). :func:`convert_trees` trains on overlapping tiles of the larger Yellowstone crop, validates on
  the whole other crop (``val.json``) and on the two other sites (``val_other_sites.json``).
- ``stardist==0.9.2`` (``stardist/data/images/``): one 512 x 512 fluorescence image of nuclei with its instance
  label image (125 nuclei). :func:`convert_nuclei` splits it at a column: the left part trains, the right part
  validates; nuclei crossing the cut belong to neither and are counted.

The pure steps (:func:`tile_starts`, :func:`tile_boxes`, :func:`split_instances`) take arrays and are what the
tests check by hand.
"""
from __future__ import annotations

import glob
import json
import math
import os
import os.path as osp
import subprocess
import sys
import xml.etree.ElementTree as ET
import zipfile
from typing import Any

import cv2
import numpy as np

from .synthetic import _rle

#: (package, version, folder inside the wheel) of each dataset
WHEELS = {'trees': ('deepforest', '2.1.0', 'deepforest/data/'),
          'nuclei': ('stardist', '0.9.2', 'stardist/data/images/')}
TREES_TRAIN = '2019_YELL_2_528000_4978000_image_crop2'
TREES_VAL = '2019_YELL_2_541000_4977000_image_crop'
TREES_OTHER_SITES = ('OSBS_029', 'SOAP_061')
#: the one class of each dataset (SOAP_061's boxes say 'Alive' / 'Dead': both are tree crowns here)
TREE_CLASSES = ('tree', )
NUCLEUS_CLASSES = ('nucleus', )


class FetchError(RuntimeError):
    """The wheel could not be downloaded (no index, no such version)."""


def fetch_wheel(package: str, version: str, cache_dir: str, index_url: str | None = None) -> str:
    """The path of ``package==version``'s wheel in ``cache_dir``, downloaded with ``pip download --no-deps`` when
    the folder holds none (a second call downloads nothing). Raises :class:`FetchError` with one line when pip
    fails."""
    found = _cached_wheel(package, version, cache_dir)
    if found:
        print(f'{package}=={version}: cached {found}')
        return found
    os.makedirs(cache_dir, exist_ok=True)
    cmd = [sys.executable, '-m', 'pip', 'download', '--no-deps', '--only-binary', ':all:',
           '--disable-pip-version-check', '--retries', '1', '--timeout', '15', f'{package}=={version}', '-d', cache_dir]
    if index_url:
        cmd += ['--index-url', index_url]
    print(f'{package}=={version}: downloading into {cache_dir} (pip download --no-deps)', flush=True)
    proc = subprocess.run(cmd, capture_output=True, text=True)
    found = _cached_wheel(package, version, cache_dir)
    if proc.returncode != 0 or not found:
        lines = [ln.strip() for ln in (proc.stderr + proc.stdout).splitlines() if ln.strip()]
        reason = next((ln for ln in reversed(lines) if 'ERROR' in ln), lines[-1] if lines else 'no output')
        raise FetchError(f'could not download {package}=={version} from the package index (is it reachable? '
                         f'pip exit {proc.returncode}): {reason}')
    print(f'{package}=={version}: downloaded {osp.basename(found)} ({osp.getsize(found) / 2**20:.1f} MiB)')
    return found


def _cached_wheel(package: str, version: str, cache_dir: str) -> str | None:
    found = sorted(glob.glob(osp.join(cache_dir, f'{package}-{version}-*.whl')))
    return found[0] if found else None


def _read_image(archive: zipfile.ZipFile, name: str) -> np.ndarray:
    """An image of the wheel as cv2 reads it from a file (BGR, or the stored single channel and dtype)."""
    img = cv2.imdecode(np.frombuffer(archive.read(name), np.uint8), cv2.IMREAD_UNCHANGED)
    if img is None:
        raise ValueError(f'{name}: not an image cv2 can read')
    return img


def read_voc_boxes(xml_text: str | bytes) -> np.ndarray:
    """Pascal VOC boxes as an (N, 4) float array of (xmin, ymin, xmax, ymax) pixel-edge coordinates."""
    root = ET.fromstring(xml_text)
    boxes = [[float(obj.findtext(f'bndbox/{k}', 'nan')) for k in ('xmin', 'ymin', 'xmax', 'ymax')]
             for obj in root.iter('object')]
    return np.array(boxes, dtype=np.float64).reshape(-1, 4)


def tile_starts(length: int, tile: int, min_overlap: int) -> list[int]:
    """The fewest tile origins covering ``[0, length)`` with tiles of ``tile`` pixels, evenly spread, where two
    neighbours overlap by at least ``min_overlap`` pixels (so any object no longer than that lies whole in one
    tile). A side no longer than ``tile`` gets one tile at 0."""
    if tile <= min_overlap:
        raise ValueError(f'tile ({tile}) must be larger than min_overlap ({min_overlap})')
    if length <= tile:
        return [0]
    n = math.ceil((length - tile) / (tile - min_overlap)) + 1
    # floor keeps every gap at most (length - tile) / (n - 1) <= tile - min_overlap
    return [(length - tile) * i // (n - 1) for i in range(n)]


def tile_boxes(boxes: np.ndarray, height: int, width: int, tile: int, min_overlap: int,
               min_visible: float) -> tuple[list[tuple[int, int, np.ndarray]], dict[str, int]]:
    """Cut an image of ``height`` x ``width`` into tiles (:func:`tile_starts` on both sides) and assign boxes.

    A box is clipped to each tile it meets and kept there when at least ``min_visible`` of its area remains.
    Returns ``[(x0, y0, boxes in tile coordinates)]`` and the counts: ``boxes``, ``whole_in_a_tile`` (boxes lying
    whole inside at least one tile), ``instances`` (all kept, whole or clipped), ``clipped_kept``,
    ``clipped_dropped`` (box parts under ``min_visible`` left out) and ``tiles``.
    """
    if not 0 < min_visible <= 1:
        raise ValueError(f'min_visible must be in (0, 1], got {min_visible}')
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    whole = np.zeros(len(boxes), dtype=bool)
    tiles = []
    counts = dict(clipped_kept=0, clipped_dropped=0)
    for y0 in tile_starts(height, tile, min_overlap):
        for x0 in tile_starts(width, tile, min_overlap):
            x1, y1 = min(x0 + tile, width), min(y0 + tile, height)
            clipped = np.stack([np.clip(boxes[:, 0], x0, x1), np.clip(boxes[:, 1], y0, y1),
                                np.clip(boxes[:, 2], x0, x1), np.clip(boxes[:, 3], y0, y1)], axis=1)
            visible = (clipped[:, 2] - clipped[:, 0]) * (clipped[:, 3] - clipped[:, 1])
            inside = visible >= area  # nothing cut off
            meets = visible > 0
            keep = meets & (visible >= min_visible * area)
            whole |= inside
            counts['clipped_kept'] += int((keep & ~inside).sum())
            counts['clipped_dropped'] += int((meets & ~keep).sum())
            tiles.append((x0, y0, clipped[keep] - [x0, y0, x0, y0]))
    counts.update(boxes=len(boxes), whole_in_a_tile=int(whole.sum()), instances=sum(len(t[2]) for t in tiles),
                  tiles=len(tiles))
    return tiles, counts


def split_instances(labels: np.ndarray, column: int) -> tuple[list[int], list[int], list[int]]:
    """The instance ids of an integer label image (0 = background) left of ``column`` (all pixels at x < column),
    right of it (all at x >= column) and crossing it (pixels on both sides)."""
    labels = np.asarray(labels)
    if not 0 < column < labels.shape[1]:
        raise ValueError(f'column must be inside the image (1..{labels.shape[1] - 1}), got {column}')
    left = set(np.unique(labels[:, :column]).tolist()) - {0}
    right = set(np.unique(labels[:, column:]).tolist()) - {0}
    both = left & right
    return sorted(left - both), sorted(right - both), sorted(both)


def best_split_column(labels: np.ndarray, lo: int, hi: int) -> int:
    """The column in ``[lo, hi]`` that the fewest instances cross (the leftmost of equals)."""
    return min(range(lo, hi + 1), key=lambda c: (len(split_instances(labels, c)[2]), c))


def instance_annotations(labels: np.ndarray, ids: list[int], full_areas: np.ndarray) -> list[dict]:
    """COCO annotations (compressed RLE masks, boxes, areas; no ids yet) of the instances ``ids`` of a (cropped)
    label image. Each mask is checked intact: it has all ``full_areas[id]`` pixels of the uncropped instance, and
    its RLE decodes to exactly those pixels."""
    from pycocotools import mask as mask_utils
    anns = []
    for inst in ids:
        mask = labels == inst
        if mask.sum() != full_areas[inst]:
            raise AssertionError(f'instance {inst}: {mask.sum()} of its {full_areas[inst]} pixels are in the crop')
        rle = _rle(mask)
        decoded = mask_utils.decode(dict(size=rle['size'], counts=rle['counts'].encode('ascii'))).astype(bool)
        if not np.array_equal(decoded, mask):
            raise AssertionError(f'instance {inst}: its RLE mask does not decode to its pixels')
        x, y, w, h = (float(v) for v in mask_utils.toBbox(rle))
        anns.append(dict(category_id=1, segmentation=rle, area=float(mask.sum()), bbox=[x, y, w, h], iscrowd=0))
    return anns


def _box_annotations(boxes: np.ndarray) -> list[dict]:
    """COCO annotations (no ids yet) of (xmin, ymin, xmax, ymax) boxes."""
    return [dict(category_id=1, bbox=[x0, y0, x1 - x0, y1 - y0], area=(x1 - x0) * (y1 - y0), iscrowd=0)
            for x0, y0, x1, y1 in np.asarray(boxes, dtype=float).tolist()]


def _write_coco(path: str, images: list[dict], annotations: list[dict], classes: tuple[str, ...],
                description: str) -> None:
    coco = dict(info=dict(description=description), images=images, annotations=annotations,
                categories=[dict(id=k + 1, name=n) for k, n in enumerate(classes)])
    with open(path, 'w') as f:
        json.dump(coco, f)


class _Writer:
    """Images under ``<out>/images/<split>/`` and their COCO annotations, numbered across the dataset."""

    def __init__(self, out: str):
        self.out = out
        self.images: dict[str, list[dict]] = {}
        self.annotations: dict[str, list[dict]] = {}
        self.next_image, self.next_ann = 1, 1

    def add(self, split: str, name: str, img: np.ndarray, anns: list[dict]) -> None:
        folder = osp.join(self.out, 'images', split)
        os.makedirs(folder, exist_ok=True)
        cv2.imwrite(osp.join(folder, name), img)
        self.images.setdefault(split, []).append(
            dict(id=self.next_image, file_name=f'images/{split}/{name}', height=img.shape[0], width=img.shape[1]))
        for ann in anns:
            ann.update(id=self.next_ann, image_id=self.next_image)
            self.next_ann += 1
        self.annotations.setdefault(split, []).extend(anns)
        self.next_image += 1

    def save(self, files: dict[str, str], classes: tuple[str, ...], description: str) -> dict[str, str]:
        """Write ``{split: annotation file name}``; returns ``{split: path}``."""
        out = {}
        for split, name in files.items():
            out[split] = osp.join(self.out, name)
            _write_coco(out[split], self.images[split], self.annotations[split], classes, f'{description}, {split}')
        return out


def convert_trees(out: str, cache_dir: str, tile: int = 400, min_overlap: int = 110,
                  min_visible: float = 0.5) -> dict[str, Any]:
    """Write the tree-crown dataset under ``out``: ``train.json`` (tiles of the larger Yellowstone crop),
    ``val.json`` (the other Yellowstone crop, whole) and ``val_other_sites.json`` (OSBS_029 and SOAP_061, whole),
    images under ``out/images/``. Returns the counts (:func:`tile_boxes`'s for the training tiles, boxes per
    validation set) and the annotation files. ``min_overlap`` defaults to the largest training box's side (108 px)
    plus a margin, so every training box lies whole inside at least one tile."""
    package, version, folder = WHEELS['trees']
    writer = _Writer(out)
    with zipfile.ZipFile(fetch_wheel(package, version, cache_dir)) as archive:
        img = _read_image(archive, f'{folder}{TREES_TRAIN}.png')
        boxes = read_voc_boxes(archive.read(f'{folder}{TREES_TRAIN}.xml'))
        tiles, tile_counts = tile_boxes(boxes, img.shape[0], img.shape[1], tile, min_overlap, min_visible)
        counts: dict[str, Any] = dict(tile_counts)
        for x0, y0, tile_boxes_ in tiles:
            writer.add('train', f'{TREES_TRAIN}_x{x0:04d}_y{y0:04d}.png', img[y0:y0 + tile, x0:x0 + tile],
                       _box_annotations(tile_boxes_))
        for split, names in (('val', (TREES_VAL, )), ('val_other_sites', TREES_OTHER_SITES)):
            for name in names:
                boxes = read_voc_boxes(archive.read(f'{folder}{name}.xml'))
                writer.add(split, f'{name}.png', _read_image(archive, f'{folder}{name}.png'),
                           _box_annotations(boxes))
                counts[f'{split}_boxes'] = counts.get(f'{split}_boxes', 0) + len(boxes)
    counts['files'] = writer.save({s: f'{s}.json' for s in ('train', 'val', 'val_other_sites')}, TREE_CLASSES,
                                  f'tree crowns from {package}=={version}')
    return counts


def nuclei_image_to_bgr(img: np.ndarray) -> np.ndarray:
    """A single-channel image of any integer or float dtype, stretched from its minimum to its maximum to 8-bit
    and repeated over three channels."""
    img = np.asarray(img, dtype=np.float64)
    lo, hi = img.min(), img.max()
    scaled = np.round((img - lo) * (255.0 / (hi - lo))) if hi > lo else np.zeros_like(img)
    return cv2.cvtColor(scaled.astype(np.uint8), cv2.COLOR_GRAY2BGR)


def convert_nuclei(out: str, cache_dir: str, column: int | None = None) -> dict[str, Any]:
    """Write the nuclei dataset under ``out``: ``train.json`` (the image left of ``column``) and ``val.json``
    (the rest), masks as RLE, images under ``out/images/``. ``column`` defaults to the column within 10 % of the
    image's width around its middle that the fewest nuclei cross. Nuclei crossing the cut are in neither set (their
    pixels stay in the images, unannotated). Returns the counts and the annotation files."""
    package, version, folder = WHEELS['nuclei']
    with zipfile.ZipFile(fetch_wheel(package, version, cache_dir)) as archive:
        img = _read_image(archive, f'{folder}img2d.tif')
        labels = _read_image(archive, f'{folder}mask2d.tif').astype(np.int64)
    width = labels.shape[1]
    if column is None:
        column = best_split_column(labels, int(width * 0.4), int(width * 0.6))
    left, right, crossing = split_instances(labels, column)
    bgr = nuclei_image_to_bgr(img)
    writer = _Writer(out)
    areas = np.bincount(labels.ravel())
    writer.add('train', 'img2d_left.png', bgr[:, :column], instance_annotations(labels[:, :column], left, areas))
    writer.add('val', 'img2d_right.png', bgr[:, column:], instance_annotations(labels[:, column:], right, areas))
    counts: dict[str, Any] = dict(nuclei=len(set(np.unique(labels).tolist()) - {0}), column=column,
                                  train=len(left), val=len(right), crossing_dropped=len(crossing))
    counts['files'] = writer.save({'train': 'train.json', 'val': 'val.json'}, NUCLEUS_CLASSES,
                                  f'nuclei from {package}=={version}')
    return counts
