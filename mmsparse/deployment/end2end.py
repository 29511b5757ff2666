"""End-to-end detector graphs: anchors, box decoding, per-class NMS and the final top-k inside the ONNX graph.

A single-stage detector whose head post-processes as mmdet's ``AnchorHead`` (RetinaNet, ...) exports as
``input`` -> detections, computed from the config's own ``test_cfg`` (``nms_pre``, ``score_thr``,
``nms.iou_threshold``, ``max_per_img``) and the head's own prior generator and box coder. Two layouts:

* ``mmdeploy``: ``dets`` float32 ``[B, N, 5]`` (x1, y1, x2, y2, score in the input's pixels) and ``labels``
  int64 ``[B, N]``; rows past the detections are zeros with label -1.
* ``efficientnms`` (TensorRT ``EfficientNMS`` names and types): ``num_detections`` int32 ``[B, 1]``,
  ``detection_boxes`` float32 ``[B, N, 4]``, ``detection_scores`` float32 ``[B, N]``, ``detection_classes``
  int32 ``[B, N]``; rows past ``num_detections`` are zeros (class 0).

``N`` is ``max_per_img``. The NMS is the ONNX ``NonMaxSuppression`` operator: while exporting, the graph calls
the custom operator ``mmsparse::nms_keep`` (PyTorch: mmcv's ``batched_nms``), which ``torch.onnx`` translates
through its ``custom_translation_table`` (:func:`translation_table`).
"""
from __future__ import annotations

from typing import Any, Callable, Sequence

import torch
import torch.nn as nn

#: graph output layouts of a detector; ``raw``: the head's raw outputs (post-processing in mmdet afterwards)
LAYOUTS = ('raw', 'mmdeploy', 'efficientnms')
OUTPUT_NAMES = {
    'mmdeploy': ['dets', 'labels'],
    'efficientnms': ['num_detections', 'detection_boxes', 'detection_scores', 'detection_classes'],
}
#: the score of a candidate that cannot be detected (padding, or at most ``score_thr``): under every real score
INVALID = -1.


def check_layout(layout: str, kind: str) -> None:
    """ValueError unless ``layout`` is one of :data:`LAYOUTS` and exports for a graph of ``kind``."""
    if layout not in LAYOUTS:
        raise ValueError(f'--outputs must be one of {", ".join(LAYOUTS)}, got {layout!r}')
    if layout != 'raw' and kind != 'single_stage':
        raise ValueError(f'--outputs {layout}: end-to-end graphs are exported for single-stage detectors '
                         f'(RetinaNet); a {kind.replace("_", "-")} graph takes --outputs raw')


def _nms_keep_eager(boxes: torch.Tensor, scores: torch.Tensor, iou_threshold: float,
                    score_threshold: float) -> torch.Tensor:
    from mmcv.ops import batched_nms
    keep = torch.zeros_like(scores)
    for b in range(scores.shape[0]):
        cls, idx = torch.nonzero(scores[b] > score_threshold, as_tuple=True)
        if len(idx):
            _, kept = batched_nms(boxes[b, idx], scores[b, cls, idx], cls, dict(iou_threshold=iou_threshold))
            keep[b, cls[kept], idx[kept]] = 1.
    return keep


def _nms_keep_onnx(boxes: Any, scores: Any, iou_threshold: float, score_threshold: float) -> Any:
    from onnxscript import opset18
    op: Any = opset18  # values are traced ir.Values, not the typed tensors of onnxscript's stubs
    selected = op.NonMaxSuppression(boxes, scores, op.Shape(boxes, start=1, end=2),
                                    op.Constant(value_floats=[iou_threshold]),
                                    op.Constant(value_floats=[score_threshold]))  # [M, 3]: (image, class, box)
    ones = op.Expand(op.Constant(value_floats=[1.]), op.Shape(selected, start=0, end=1))
    return op.ScatterND(op.ConstantOfShape(op.Shape(scores)), selected, ones)


_OPS: dict[str, Any] = {}


def nms_keep_op() -> Any:
    """The custom operator ``mmsparse::nms_keep(boxes, scores, iou_threshold, score_threshold) -> keep``.

    Per image and class, ONNX ``NonMaxSuppression`` semantics: the boxes scoring above ``score_threshold``,
    highest first, each suppressing the later ones whose IoU with it exceeds ``iou_threshold``.

    Shapes:
        boxes: ``[B, N, 4]`` (x1, y1, x2, y2); scores: ``[B, C, N]``; keep: ``[B, C, N]``, 1. where kept, else 0.
    """
    if 'nms_keep' not in _OPS:
        if not hasattr(torch.library, 'custom_op'):
            raise RuntimeError(f'--outputs mmdeploy / efficientnms need torch.library.custom_op and the '
                               f'torch.export-based torch.onnx (checked on torch 2.13); torch {torch.__version__} '
                               'has no custom_op: export with --outputs raw on a newer torch')
        op = torch.library.custom_op('mmsparse::nms_keep', _nms_keep_eager, mutates_args=())
        op.register_fake(lambda boxes, scores, iou_threshold, score_threshold: torch.empty_like(scores))
        _OPS['nms_keep'] = op
    return _OPS['nms_keep']


def translation_table() -> dict[Callable, Callable]:
    """``torch.onnx.export(custom_translation_table=...)`` for the graphs of this module."""
    nms_keep_op()
    return {torch.ops.mmsparse.nms_keep.default: _nms_keep_onnx}


def check_head(head: nn.Module) -> dict[str, Any]:
    """The head's ``test_cfg`` values the graph uses; ValueError for a head or config it does not reproduce."""
    from mmdet.models.dense_heads import AnchorHead
    from mmdet.models.dense_heads.base_dense_head import BaseDenseHead
    from mmdet.models.task_modules.prior_generators import AnchorGenerator
    name = type(head).__name__
    generator = getattr(head, 'prior_generator', None)
    if (not isinstance(generator, AnchorGenerator) or getattr(generator, 'use_box_type', False)
            or type(generator).single_level_grid_priors is not AnchorGenerator.single_level_grid_priors):
        raise ValueError(f'--outputs: {name}\'s prior generator is not an mmdet AnchorGenerator; export it with '
                         '--outputs raw')
    if (not isinstance(head, AnchorHead) or type(head)._predict_by_feat_single is not
            BaseDenseHead._predict_by_feat_single or type(head)._bbox_post_process is not
            BaseDenseHead._bbox_post_process or getattr(head.loss_cls, 'custom_cls_channels', False)):
        raise ValueError(f'--outputs: {name} is not post-processed as AnchorHead (RetinaNet); export it with '
                         '--outputs raw')
    cfg = head.test_cfg
    nms = cfg.get('nms') or {}
    if nms.get('type', 'nms') != 'nms' or 'iou_threshold' not in nms:
        raise ValueError(f'--outputs: test_cfg.nms must be dict(type="nms", iou_threshold=...), got {nms}')
    values = dict(nms_pre=cfg.get('nms_pre', -1), score_thr=float(cfg.get('score_thr', 0.)),
                  iou_threshold=float(nms['iou_threshold']), max_per_img=cfg.get('max_per_img', 100))
    for key in ('nms_pre', 'max_per_img'):
        if not isinstance(values[key], int) or values[key] < 1:
            raise ValueError(f'--outputs: test_cfg.{key} must be a positive integer, got {values[key]!r}')
    values['min_bbox_size'] = cfg.get('min_bbox_size', -1)
    return values


def grid_anchors(generator: Any, sizes: Sequence[Any], like: torch.Tensor) -> list[torch.Tensor]:
    """mmdet ``AnchorGenerator.grid_priors(sizes)``: per level ``[H * W * A, 4]``, anchors of a cell consecutive.

    Written so that no intermediate tensor can have fewer than 2 elements: ``torch.export`` would otherwise
    specialise a symbolic map size to the example's value (the grid's own ``arange(W)`` is such a tensor).
    """
    levels = []
    for level, (h, w) in enumerate(sizes):
        stride_w, stride_h = generator.strides[level]
        # [n, 4]: row i holds i (as x1, y1, x2, y2 columns), times the stride in the columns of that axis
        cols_x = like.new_tensor([stride_w, 0., stride_w, 0.])
        cols_y = like.new_tensor([0., stride_h, 0., stride_h])
        xs = torch.arange(w * 4, device=like.device).reshape(w, 4).div(4, rounding_mode='floor').to(like.dtype)
        ys = torch.arange(h * 4, device=like.device).reshape(h, 4).div(4, rounding_mode='floor').to(like.dtype)
        shifts = (ys * cols_y)[:, None, None, :] + (xs * cols_x)[None, :, None, :]  # [H, W, 1, 4]
        base = generator.base_anchors[level].to(like)[None, None]  # [1, 1, A, 4]
        levels.append((shifts + base).reshape(-1, 4))
    return levels


def _level_candidates(head: Any, cls_score: torch.Tensor, bbox_pred: torch.Tensor, priors: torch.Tensor,
                      nms_pre: int) -> tuple[torch.Tensor, ...]:
    """One level's ``nms_pre`` highest (anchor, class) scores, as mmdet's ``filter_scores_and_topk``.

    Returns the scores ``[B, K]`` (:data:`INVALID` where fewer exist), labels ``[B, K]``, the anchors' priors
    and deltas ``[B, K, 4]``.
    """
    b, num_classes = cls_score.shape[0], head.cls_out_channels
    logits = cls_score.permute(0, 2, 3, 1).reshape(b, -1, num_classes)
    scores = logits.sigmoid() if head.use_sigmoid_cls else logits.softmax(-1)[..., :-1]
    deltas = bbox_pred.permute(0, 2, 3, 1).reshape(b, -1, 4)
    num_classes = scores.shape[-1]
    # pad the anchors so that the top-k always has nms_pre entries (a small map has fewer pairs)
    pad = -(-nms_pre // num_classes)
    scores = torch.cat([scores, scores.new_full((b, pad, num_classes), INVALID)], 1)
    deltas = torch.cat([deltas, deltas.new_zeros(b, pad, 4)], 1)
    priors = torch.cat([priors, priors.new_zeros(pad, 4)], 0)
    top, idx = scores.reshape(b, -1).topk(nms_pre, dim=1)
    anchor, label = idx // num_classes, idx % num_classes
    return top, label, priors[anchor], deltas.gather(1, anchor[..., None].expand(-1, -1, 4))


def detect(head: Any, cls_scores: list[torch.Tensor], bbox_preds: list[torch.Tensor], img_hw: tuple[Any, ...],
           layout: str) -> tuple[torch.Tensor, ...]:
    """The detections of a head's raw outputs, as mmdet's ``predict_by_feat`` (``rescale=False``), in ``layout``.

    Shapes:
        cls_scores[i]: ``[B, A * C, H_i, W_i]``; bbox_preds[i]: ``[B, A * 4, H_i, W_i]``; the outputs: see the
        module docstring.
    """
    cfg = check_head(head)
    mlvl_priors = grid_anchors(head.prior_generator, [score.shape[-2:] for score in cls_scores], cls_scores[0])
    levels = [_level_candidates(head, s, d, p, cfg['nms_pre']) for s, d, p in zip(cls_scores, bbox_preds, mlvl_priors)]
    scores, labels, priors, deltas = (torch.cat(parts, 1) for parts in zip(*levels))
    b, n = scores.shape
    scores = torch.where(scores > cfg['score_thr'], scores, torch.full_like(scores, INVALID))
    boxes = head.bbox_coder.decode(priors.reshape(-1, 4), deltas.reshape(-1, 4), max_shape=img_hw).reshape(b, n, 4)
    if cfg['min_bbox_size'] >= 0:  # mmdet drops the boxes whose width or height is not above it
        wh = boxes[..., 2:] - boxes[..., :2]
        large = (wh > cfg['min_bbox_size']).all(-1)
        scores = torch.where(large, scores, torch.full_like(scores, INVALID))
    num_classes = head.num_classes
    one_hot = labels[:, None, :] == torch.arange(num_classes, device=labels.device)[None, :, None]
    class_scores = torch.where(one_hot, scores[:, None, :], torch.full_like(one_hot, INVALID, dtype=scores.dtype))
    keep = nms_keep_op()(boxes, class_scores, cfg['iou_threshold'], cfg['score_thr'])
    kept = torch.where(keep > 0, class_scores, torch.full_like(class_scores, INVALID)).reshape(b, -1)
    k = cfg['max_per_img']
    kept = torch.cat([kept, kept.new_full((b, k), INVALID)], 1)  # k entries even when C * N < max_per_img
    top, idx = kept.topk(k, dim=1)
    valid = top > INVALID
    box_idx = idx % n
    out_labels = torch.where(valid, idx // n, torch.full_like(idx, -1))
    out_scores = torch.where(valid, top, torch.zeros_like(top))
    out_boxes = boxes.gather(1, box_idx[..., None].expand(-1, -1, 4)) * valid[..., None].to(boxes.dtype)
    if layout == 'mmdeploy':
        return torch.cat([out_boxes, out_scores[..., None]], -1), out_labels
    classes = out_labels.clamp(min=0).to(torch.int32)
    return valid.sum(1, keepdim=True).to(torch.int32), out_boxes, out_scores, classes


class End2EndWrapper(nn.Module):
    """``input`` -> a single-stage detector's detections in ``layout`` (see the module docstring)."""

    model: Any  # an mmdet single-stage detector (duck-typed)

    def __init__(self, model: nn.Module, layout: str) -> None:
        super().__init__()
        check_layout(layout, 'single_stage')
        if layout == 'raw':
            raise ValueError('End2EndWrapper: the raw layout is export.ExportWrapper')
        check_head(model.bbox_head)  # type: ignore[arg-type]
        nms_keep_op()  # an old torch fails here, before tracing
        self.model, self.layout = model, layout

    def forward(self, input: torch.Tensor) -> tuple[torch.Tensor, ...]:  # noqa: A002  (the graph input's name)
        cls_scores, bbox_preds = self.model.bbox_head(self.model.extract_feat(input))
        return detect(self.model.bbox_head, cls_scores, bbox_preds, tuple(input.shape[2:]), self.layout)


def graph_meta(model: nn.Module, layout: str) -> dict[str, Any]:
    """The metadata entries of an end-to-end graph: ``layout``, ``max_per_img``, ``score_thr``, ``masks``."""
    cfg = check_head(model.bbox_head)  # type: ignore[arg-type]
    return dict(layout=layout, max_per_img=cfg['max_per_img'], score_thr=cfg['score_thr'], masks=None)


def detections(outputs: list[Any], layout: str) -> list[Any]:
    """The graph's outputs (numpy or torch, in ``layout``) as one mmdet ``InstanceData`` per image (padding
    dropped): ``bboxes`` ``[n, 4]``, ``scores`` ``[n]``, ``labels`` ``[n]`` int64."""
    from mmengine.structures import InstanceData
    outs = [torch.as_tensor(o) for o in outputs]
    if layout == 'mmdeploy':
        dets, labels = outs
        counts = (labels >= 0).sum(1).tolist()
        boxes, scores = dets[..., :4], dets[..., 4]
    elif layout == 'efficientnms':
        num, boxes, scores, labels = outs
        counts = num[:, 0].tolist()
    else:
        raise ValueError(f'layout must be mmdeploy or efficientnms, got {layout!r}')
    results = []
    for i, n in enumerate(counts):
        results.append(InstanceData(bboxes=boxes[i, :n].float(), scores=scores[i, :n].float(),
                                    labels=labels[i, :n].long()))
    return results


def compare_detections(model: Any, path: str, inputs: torch.Tensor, layout: str, box_tol: float = 1e-3,
                       score_tol: float = 1e-4, opt_level: str = 'all') -> list[dict[str, Any]]:
    """An end-to-end graph (ONNX Runtime) against mmdet's ``predict`` (``rescale=False``) on the same ``inputs``.

    One row per image, as :func:`.runtime.compare`'s detection rows (matched as sets): ``count``, ``compared``,
    ``labels_equal``, ``box_err``, ``score_err`` and ``ok`` (every detection paired with its label, boxes within
    ``box_tol`` x the image size, scores within ``score_tol``).
    """
    from .runtime import _detection_row, _predict, make_session
    outputs = make_session(path, opt_level=opt_level).run(OUTPUT_NAMES[layout], {'input': inputs.numpy()})
    with torch.no_grad():
        ref = _predict(model, inputs)
    rows = []
    for i, (r, g) in enumerate(zip(ref, detections(outputs, layout))):
        row = dict(name=f'detections[{i}]', **_detection_row(r, g, box_tol * max(inputs.shape[2:]), 1.))
        row['ok'] = row['ok'] and row['score_err'] <= score_tol
        rows.append(row)
    return rows


def verify(model: Any, path: str, sizes: Sequence[Sequence[int]], layout: str, batch: int = 1, seed: int = 0,
           printer: Callable[[str], Any] | None = print) -> list[dict[str, Any]]:
    """:func:`compare_detections` on random inputs at every ``(H, W)`` of ``sizes``; prints and returns the rows.

    Raises AssertionError naming the first image whose detections differ.
    """
    gen = torch.Generator().manual_seed(seed)
    rows: list[dict[str, Any]] = []
    for h, w in sizes:
        for row in compare_detections(model, path, torch.randn(batch, 3, h, w, generator=gen), layout):
            row['size'] = (batch, h, w)
            row['status'] = 'ok' if row['ok'] and row['count'][0] else 'none' if row['ok'] else 'FAIL'
            rows.append(row)
            if printer:
                detail = ', '.join(f'{k} {v:.2e}' if isinstance(v, float) else f'{k} {v}' for k, v in row.items()
                                   if k not in ('name', 'size', 'status', 'ok'))
                printer(f'[{row["status"]:>4}] {batch}x3x{h}x{w} {row["name"]}: {detail}')
    failures = [row for row in rows if row['status'] == 'FAIL']
    if failures:
        raise AssertionError(f'ONNX Runtime differs from mmdet: {failures[0]}')
    if printer and all(row['status'] == 'none' for row in rows):
        printer('       no detection from either to compare (every score under test_cfg.score_thr, as with an '
                'untrained head)')
    return rows
