"""``tools/infer.py MODEL.onnx``: pictures, label maps and ``results.json`` in the PyTorch path's form."""
from __future__ import annotations

import json
import os
import os.path as osp
from typing import Any, Sequence

import cv2
import numpy as np

from .draw import _name, draw_detections, draw_segmentation
from .model import Detections, OrtModel, Segmentation
from .rle import encode_rle


def detection_entry(dets: Detections, classes: Sequence[str]) -> dict[str, Any]:
    """``labels``, ``scores``, ``bboxes``, COCO-RLE ``masks`` (instance segmentation) and ``label_names``."""
    entry: dict[str, Any] = dict(labels=dets.labels.tolist(), scores=dets.scores.tolist(),
                                 bboxes=dets.bboxes.tolist())
    if dets.masks is not None:
        entry['masks'] = [encode_rle(mask) for mask in dets.masks]
    if classes:
        entry['label_names'] = [_name(classes, label) for label in entry['labels']]
    return entry


def segmentation_entry(seg: Segmentation, classes: Sequence[str], path: str) -> dict[str, Any]:
    """``shape``, pixel ``counts`` per class name and ``pred``: the label map, saved (uint8 PNG) at ``path``."""
    if not cv2.imwrite(path, seg.label_map.astype(np.uint8)):
        raise OSError(f'could not write {path}')
    ids, counts = np.unique(seg.label_map, return_counts=True)
    names = [_name(classes, i) if classes else str(i) for i in ids.tolist()]
    return dict(shape=list(seg.label_map.shape), counts=dict(zip(names, counts.tolist())), pred=path)


def infer_images(model_path: str, images: Sequence[str], out_dir: str, score_thr: float = 0.3,
                 threads: int | None = None) -> list[dict[str, Any]]:
    """Run the ONNX file on ``images`` and write ``out_dir/vis/<name>``, ``out_dir/pred/<stem>.png``
    (segmentation) and ``out_dir/results.json``; returns the JSON's per-image entries.

    Args:
        score_thr: detection: the lowest score drawn (the JSON keeps every score).
    """
    model = OrtModel(model_path, threads)
    for sub in ('vis', 'pred') if model.task == 'mmseg' else ('vis', ):
        os.makedirs(osp.join(out_dir, sub), exist_ok=True)
    entries = []
    for image in images:
        img = model.read(image)
        result = model.predict(img)
        vis = osp.join(out_dir, 'vis', osp.basename(image))
        if isinstance(result, Segmentation):
            drawn = draw_segmentation(img, result.label_map, model.classes, model.palette)
            stem = osp.splitext(osp.basename(image))[0]
            entry = segmentation_entry(result, model.classes, osp.join(out_dir, 'pred', stem + '.png'))
        else:
            drawn = draw_detections(img, result, model.classes, model.palette, score_thr)
            entry = detection_entry(result, model.classes)
        if not cv2.imwrite(vis, drawn):
            raise OSError(f'could not write {vis}')
        entries.append(dict(input=image, vis=vis, **entry))
    path = osp.join(out_dir, 'results.json')
    with open(path, 'w') as f:
        json.dump(dict(config=None, checkpoint=model_path, task=model.task, classes=model.classes, results=entries), f)
    print(f'{len(entries)} image(s): pictures in {osp.join(out_dir, "vis")}, raw results in {path}')
    return entries
