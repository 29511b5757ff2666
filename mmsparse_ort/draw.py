"""Pictures of predictions with OpenCV: class colours blended over the image, boxes and ``class: score`` labels."""
from __future__ import annotations

from typing import Sequence

import cv2
import numpy as np

from .model import Detections

#: opacity of the class colours (mmdet's and mmseg's visualisers' default)
ALPHA = 0.8
#: box outline width in pixels (mmdet's default)
LINE_WIDTH = 3


def _name(classes: Sequence[str], label: int) -> str:
    return classes[label] if 0 <= label < len(classes) else str(label)


def _bgr(palette: Sequence[Sequence[int]], label: int) -> tuple[int, int, int]:
    r, g, b = palette[label % len(palette)] if palette else (255, 0, 0)
    return int(b), int(g), int(r)


def _text(img: np.ndarray, text: str, origin: tuple[int, int]) -> None:
    """``text`` in light grey on black whose top-left corner is ``origin``, kept inside the image (mmdet's style)."""
    scale = max(min(img.shape[:2]) / 700., 0.35)
    (tw, th), base = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, 1)
    x = int(min(max(origin[0], 0), max(img.shape[1] - tw, 0)))
    y = int(min(max(origin[1], 0), max(img.shape[0] - th - base, 0)))
    cv2.rectangle(img, (x, y), (x + tw, y + th + base), (0, 0, 0), -1)
    cv2.putText(img, text, (x, y + th), cv2.FONT_HERSHEY_SIMPLEX, scale, (200, 200, 200), 1, cv2.LINE_AA)


def _widest_row_centre(mask: np.ndarray) -> tuple[int, int]:
    """``(x, y)``: the middle pixel of the first row where ``mask`` has the most pixels."""
    ys, xs = np.nonzero(mask)
    rows, starts, counts = np.unique(ys, return_index=True, return_counts=True)
    best = int(counts.argmax())
    return int(xs[starts[best] + counts[best] // 2]), int(rows[best])


def draw_segmentation(img: np.ndarray, label_map: np.ndarray, classes: Sequence[str],
                      palette: Sequence[Sequence[int]]) -> np.ndarray:
    """The BGR image with the class colours blended in (``ALPHA``), each class named on its widest row.

    The layout is mmseg's ``SegLocalVisualizer``'s (names drawn into the colour layer before blending).
    """
    colors = np.zeros_like(img)
    labels = [int(i) for i in np.unique(label_map)[::-1] if 0 <= i < len(classes)]
    for label in labels:
        colors[label_map == label] = _bgr(palette, label)
    font, font_scale = cv2.FONT_HERSHEY_SIMPLEX, min(img.shape[:2]) / 500.
    thickness = 1 if min(img.shape[:2]) < 300 else 2
    for label in labels:
        x, y = _widest_row_centre(label_map == label)
        (tw, th), base = cv2.getTextSize(classes[label], font, font_scale, thickness)
        cv2.rectangle(colors, (x, y), (x + tw + base, y + th + base), _bgr(palette, label), -1)
        cv2.rectangle(colors, (x, y), (x + tw + base, y + th + base), (0, 0, 0), thickness)
        cv2.putText(colors, classes[label], (x, y + th), font, font_scale, (255, 255, 255), thickness, cv2.LINE_8)
    return (img * (1 - ALPHA) + colors * ALPHA).astype(np.uint8)


def draw_detections(img: np.ndarray, dets: Detections, classes: Sequence[str], palette: Sequence[Sequence[int]],
                    score_thr: float) -> np.ndarray:
    """The BGR image with the detections scoring above ``score_thr``: masks blended, boxes, ``class: score``.

    The layout of mmdet's ``DetLocalVisualizer`` (palette colours, 3-pixel boxes, labels at their top-left corner),
    drawn with OpenCV instead of matplotlib: similar pictures, not the same pixels.
    """
    out = img.copy()
    shown = np.flatnonzero(dets.scores > score_thr)
    if dets.masks is not None:
        for i in shown:
            mask = dets.masks[i]
            fill = np.asarray(_bgr(palette, int(dets.labels[i])), dtype=np.float32)
            out[mask] = (out[mask] * (1 - ALPHA) + fill * ALPHA).astype(np.uint8)
    for i in shown:
        label = int(dets.labels[i])
        color = _bgr(palette, label)
        x1, y1, x2, y2 = (int(round(float(v))) for v in dets.bboxes[i])
        cv2.rectangle(out, (x1, y1), (x2, y2), color, LINE_WIDTH)
        _text(out, f'{_name(classes, label)}: {round(float(dets.scores[i]) * 100, 1)}',
              (x1 + LINE_WIDTH, y1 + LINE_WIDTH))
    return out
