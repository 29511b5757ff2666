"""End-to-end detector graphs: the detectors' post-processing (NMS, RoIAlign, masks) inside the ONNX graph.

A single-stage detector whose head post-processes as mmdet's ``AnchorHead`` (RetinaNet, ...) exports as
(``input``, ``img_shape``) -> detections, computed from the config's own ``test_cfg`` (``nms_pre``, ``score_thr``,
``nms.iou_threshold``, ``max_per_img``) and the head's own prior generator and box coder; a two-stage detector
(``RPNHead`` + ``StandardRoIHead``: Mask R-CNN, Faster R-CNN) as its RPN, RoIAlign, box head, NMS and mask head
(:func:`detect_two_stage`). The inputs: ``input`` float32 ``[B, 3, H, W]`` (the image after the data
preprocessor, padded) and ``img_shape`` int64 ``[B, 2]``: the height and width of each image within ``input``
before padding (mmdet's ``img_shape``), to which the boxes are clipped, as mmdet clips them. Two layouts:

* ``mmdeploy``: ``dets`` float32 ``[B, N, 5]`` (x1, y1, x2, y2, score in the input's pixels) and ``labels``
  int64 ``[B, N]``; rows past the detections are zeros with label -1.
* ``efficientnms`` (TensorRT ``EfficientNMS`` names and types): ``num_detections`` int32 ``[B, 1]``,
  ``detection_boxes`` float32 ``[B, N, 4]``, ``detection_scores`` float32 ``[B, N]``, ``detection_classes``
  int32 ``[B, N]``; rows past ``num_detections`` are zeros (class 0).

Mask R-CNN adds ``masks`` float32 probabilities, ``[B, N, H, W]`` (``full``) or ``[B, N, 28, 28]`` (``roi``).
``N`` is ``max_per_img``. NMS and RoIAlign are the ONNX ``NonMaxSuppression`` and ``RoiAlign`` operators: while
exporting, the graph calls the custom operators ``mmsparse::nms_keep`` and ``mmsparse::roi_align`` (in PyTorch:
mmcv's ``batched_nms`` and ``roi_align``), which ``torch.onnx`` translates through its
``custom_translation_table`` (:func:`translation_table`).
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
#: the inputs of an end-to-end graph: the padded images and each one's (H, W) before padding
INPUT_NAMES = ('input', 'img_shape')
#: mask outputs of a two-stage graph: pasted into the input (``full``) or the head's RoI masks (``roi``)
MASKS = ('full', 'roi')
#: the score of a candidate that cannot be detected (padding, or at most ``score_thr``): under every real score
INVALID = -1.


def check_layout(layout: str, kind: str) -> None:
    """ValueError unless ``layout`` is one of :data:`LAYOUTS` and exports for a graph of ``kind``."""
    if layout not in LAYOUTS:
        raise ValueError(f'--outputs must be one of {", ".join(LAYOUTS)}, got {layout!r}')
    if layout != 'raw' and kind not in ('single_stage', 'two_stage'):
        raise ValueError(f'--outputs {layout}: end-to-end graphs are exported for detectors; a '
                         f'{kind.replace("_", "-")} graph takes --outputs raw')


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


def _roi_align_eager(feat: torch.Tensor, rois: torch.Tensor, out_h: int, out_w: int, spatial_scale: float,
                     sampling_ratio: int) -> torch.Tensor:
    from mmcv.ops import roi_align
    return roi_align(feat, rois, (out_h, out_w), spatial_scale, sampling_ratio, 'avg', True)


def _roi_align_onnx(feat: Any, rois: Any, out_h: int, out_w: int, spatial_scale: float, sampling_ratio: int) -> Any:
    from onnx import TensorProto
    from onnxscript import opset18
    op: Any = opset18
    axis = op.Constant(value_ints=[1])
    image = op.Cast(op.Squeeze(op.Slice(rois, op.Constant(value_ints=[0]), axis, axis), axis), to=TensorProto.INT64)
    boxes = op.Slice(rois, axis, op.Constant(value_ints=[5]), axis)
    return op.RoiAlign(feat, boxes, image, mode='avg', output_height=out_h, output_width=out_w,
                       sampling_ratio=sampling_ratio, spatial_scale=spatial_scale,
                       coordinate_transformation_mode='half_pixel')


def roi_align_op() -> Any:
    """The custom operator ``mmsparse::roi_align(feat, rois, out_h, out_w, spatial_scale, sampling_ratio)``:
    mmcv's ``roi_align`` with ``aligned=True``, average pooling; ONNX ``RoiAlign`` with ``half_pixel``.

    Shapes:
        feat: ``[B, C, H, W]``; rois: ``[R, 5]`` (image index, x1, y1, x2, y2); output ``[R, C, out_h, out_w]``.
    """
    if 'roi_align' not in _OPS:
        nms_keep_op()  # the torch check
        op = torch.library.custom_op('mmsparse::roi_align', _roi_align_eager, mutates_args=())
        op.register_fake(lambda feat, rois, out_h, out_w, spatial_scale, sampling_ratio: feat.new_empty(
            (rois.shape[0], feat.shape[1], out_h, out_w)))
        _OPS['roi_align'] = op
    return _OPS['roi_align']


def translation_table() -> dict[Callable, Callable]:
    """``torch.onnx.export(custom_translation_table=...)`` for the graphs of this module."""
    nms_keep_op()
    roi_align_op()
    return {torch.ops.mmsparse.nms_keep.default: _nms_keep_onnx, torch.ops.mmsparse.roi_align.default: _roi_align_onnx}


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
    return nms_settings(head.test_cfg, 'test_cfg', ('nms_pre', 'max_per_img'))


def nms_settings(cfg: Any, where: str, counts: Sequence[str]) -> dict[str, Any]:
    """``nms_pre``, ``max_per_img`` (those in ``counts``: positive integers), ``iou_threshold`` (of an ``nms``
    of type ``nms``), ``score_thr`` and ``min_bbox_size`` of the ``test_cfg`` ``cfg`` at ``where``."""
    nms = cfg.get('nms') or {}
    if nms.get('type', 'nms') != 'nms' or 'iou_threshold' not in nms:
        raise ValueError(f'--outputs: {where}.nms must be dict(type="nms", iou_threshold=...), got {nms}')
    values = dict(score_thr=float(cfg.get('score_thr', 0.)), iou_threshold=float(nms['iou_threshold']),
                  min_bbox_size=cfg.get('min_bbox_size', -1))
    for key in counts:
        values[key] = cfg.get(key)
        if not isinstance(values[key], int) or values[key] < 1:
            raise ValueError(f'--outputs: {where}.{key} must be a positive integer, got {values[key]!r}')
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


def _invalid_unless(scores: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
    return torch.where(cond, scores, torch.full_like(scores, INVALID))


def clip_boxes(coder: Any, boxes: torch.Tensor, img_shape: torch.Tensor) -> torch.Tensor:
    """``boxes`` ``[B, N, 4]`` clamped to [0, W] and [0, H] of their image (``img_shape`` ``[B, 2]``, (H, W)), as
    mmdet's box coders clamp to ``max_shape``; unchanged when the coder does not clip (``clip_border=False``)."""
    if not getattr(coder, 'clip_border', True):
        return boxes
    hw = img_shape.to(boxes.dtype)
    limits = torch.stack([hw[:, 1], hw[:, 0], hw[:, 1], hw[:, 0]], -1)[:, None, :]  # [B, 1, 4]: W, H, W, H
    return torch.minimum(boxes.clamp(min=0), limits)


def _candidates(head: Any, cls_scores: list[torch.Tensor], bbox_preds: list[torch.Tensor], nms_pre: int,
                img_shape: torch.Tensor, min_bbox_size: float) -> tuple[torch.Tensor, ...]:
    """Every level's ``nms_pre`` best (anchor, class) pairs, decoded and clamped to ``img_shape`` ``[B, 2]``.

    Returns scores ``[B, N]`` (:data:`INVALID` for padding and boxes not above ``min_bbox_size``), labels and
    level indices ``[B, N]``, boxes ``[B, N, 4]``; ``N`` = levels x ``nms_pre``.
    """
    mlvl_priors = grid_anchors(head.prior_generator, [score.shape[-2:] for score in cls_scores], cls_scores[0])
    levels = [_level_candidates(head, s, d, p, nms_pre) for s, d, p in zip(cls_scores, bbox_preds, mlvl_priors)]
    scores, labels, priors, deltas = (torch.cat(parts, 1) for parts in zip(*levels))
    level_ids = torch.cat([torch.full_like(part[1], i) for i, part in enumerate(levels)], 1)
    b, n = scores.shape
    boxes = head.bbox_coder.decode(priors.reshape(-1, 4), deltas.reshape(-1, 4)).reshape(b, n, 4)
    boxes = clip_boxes(head.bbox_coder, boxes, img_shape)
    if min_bbox_size >= 0:  # mmdet drops the boxes whose width or height is not above it
        scores = _invalid_unless(scores, (boxes[..., 2:] - boxes[..., :2] > min_bbox_size).all(-1))
    return scores, labels, level_ids, boxes


def _class_nms_topk(boxes: torch.Tensor, scores: torch.Tensor, labels: torch.Tensor, num_classes: int,
                    iou_threshold: float, score_thr: float, k: int) -> tuple[torch.Tensor, ...]:
    """Per-class NMS of candidates, then the ``k`` highest kept scores over all classes, highest first.

    Shapes:
        boxes: ``[B, N, 4]``; scores: ``[B, N]`` (:data:`INVALID`: not a candidate); labels: ``[B, N]``.
        Returns scores ``[B, k]`` (0 past the detections), labels ``[B, k]`` (-1 past them), boxes ``[B, k, 4]``
        (0 past them) and the mask of real detections ``[B, k]``.
    """
    b, n = scores.shape
    one_hot = labels[:, None, :] == torch.arange(num_classes, device=labels.device)[None, :, None]
    class_scores = _invalid_unless(scores[:, None, :].expand(-1, num_classes, -1), one_hot)
    keep = nms_keep_op()(boxes, class_scores, iou_threshold, score_thr)
    kept = _invalid_unless(class_scores, keep > 0).reshape(b, -1)
    kept = torch.cat([kept, kept.new_full((b, k), INVALID)], 1)  # k entries even when C * N < k
    top, idx = kept.topk(k, dim=1)
    valid = top > INVALID
    out_boxes = boxes.gather(1, (idx % n)[..., None].expand(-1, -1, 4)) * valid[..., None].to(boxes.dtype)
    return (torch.where(valid, top, torch.zeros_like(top)), torch.where(valid, idx // n, torch.full_like(idx, -1)),
            out_boxes, valid)


def _layout_outputs(layout: str, scores: torch.Tensor, labels: torch.Tensor, boxes: torch.Tensor,
                    valid: torch.Tensor) -> tuple[torch.Tensor, ...]:
    if layout == 'mmdeploy':
        return torch.cat([boxes, scores[..., None]], -1), labels
    return valid.sum(1, keepdim=True).to(torch.int32), boxes, scores, labels.clamp(min=0).to(torch.int32)


def detect(head: Any, cls_scores: list[torch.Tensor], bbox_preds: list[torch.Tensor], img_shape: torch.Tensor,
           layout: str) -> tuple[torch.Tensor, ...]:
    """The detections of a head's raw outputs, as mmdet's ``predict_by_feat`` (``rescale=False``), in ``layout``.

    Shapes:
        cls_scores[i]: ``[B, A * C, H_i, W_i]``; bbox_preds[i]: ``[B, A * 4, H_i, W_i]``; img_shape: ``[B, 2]``
        (H, W of each image before padding); the outputs: see the module docstring.
    """
    cfg = check_head(head)
    scores, labels, _, boxes = _candidates(head, cls_scores, bbox_preds, cfg['nms_pre'], img_shape,
                                           cfg['min_bbox_size'])
    scores = _invalid_unless(scores, scores > cfg['score_thr'])
    dets = _class_nms_topk(boxes, scores, labels, head.num_classes, cfg['iou_threshold'], cfg['score_thr'],
                           cfg['max_per_img'])
    return _layout_outputs(layout, *dets)


def check_two_stage(model: Any) -> dict[str, Any]:
    """The RPN and R-CNN ``test_cfg`` values a two-stage graph uses; ValueError for a model it does not reproduce."""
    from mmcv.ops import RoIAlign
    from mmdet.models.dense_heads import RPNHead
    from mmdet.models.roi_heads import StandardRoIHead
    roi_head = model.roi_head
    if type(model.rpn_head) is not RPNHead or type(roi_head) is not StandardRoIHead:
        raise ValueError(f'--outputs: {type(model.rpn_head).__name__} / {type(roi_head).__name__} are not '
                         'RPNHead / StandardRoIHead (Mask R-CNN, Faster R-CNN); export with --outputs raw')
    extractors = [roi_head.bbox_roi_extractor] + ([roi_head.mask_roi_extractor] if roi_head.with_mask else [])
    for extractor in extractors:
        if not all(isinstance(layer, RoIAlign) and layer.aligned and layer.pool_mode == 'avg'
                   for layer in extractor.roi_layers):
            raise ValueError('--outputs: the RoI extractors must use RoIAlign(aligned=True, pool_mode="avg")')
    if roi_head.bbox_head.reg_class_agnostic or roi_head.bbox_head.custom_cls_channels:
        raise ValueError('--outputs: class-agnostic or custom-channel box heads are not reproduced; --outputs raw')
    rpn = nms_settings(model.rpn_head.test_cfg, 'test_cfg.rpn', ('nms_pre', 'max_per_img'))
    rcnn = nms_settings(roi_head.test_cfg, 'test_cfg.rcnn', ('max_per_img', ))
    return dict(rcnn, rpn_nms_pre=rpn['nms_pre'], rpn_max=rpn['max_per_img'], rpn_iou=rpn['iou_threshold'],
                rpn_min_bbox_size=rpn['min_bbox_size'])


def _roi_features(extractor: Any, feats: Sequence[torch.Tensor], rois: torch.Tensor) -> torch.Tensor:
    """mmdet ``SingleRoIExtractor``: each RoI pooled from the level its scale maps to.

    As in mmdet, each level pools only its own RoIs (``nonzero``: data-dependent sizes in the graph): pooling every
    RoI at every level would cost several times more, most of all at the finest level, where a large RoI's
    adaptive sampling (``sampling_ratio=0``) reads many points per bin. The levels' results are concatenated and
    put back in the RoIs' order by one row gather (scattering each level into a zero tensor instead copies the
    whole output once per level, element by element in ONNX Runtime).
    """
    num_levels = len(extractor.featmap_strides)
    scale = ((rois[:, 3] - rois[:, 1]) * (rois[:, 4] - rois[:, 2])).sqrt()
    target = torch.floor(torch.log2(scale / extractor.finest_scale + 1e-6)).clamp(min=0, max=num_levels - 1)
    indices, pooled = [], []
    for level, layer in enumerate(extractor.roi_layers):
        index = torch.nonzero(target == level)[:, 0]
        indices.append(index)
        pooled.append(roi_align_op()(feats[level], rois[index], int(layer.output_size[0]),
                                     int(layer.output_size[1]), float(layer.spatial_scale), int(layer.sampling_ratio)))
    order = torch.cat(indices)  # a permutation of the RoIs: every RoI has exactly one level
    position = order.new_zeros(rois.shape[0]).index_put((order, ), torch.arange(order.shape[0], device=order.device))
    return torch.cat(pooled)[position]


def _with_image_index(boxes: torch.Tensor) -> torch.Tensor:
    """``[B, K, 4]`` boxes as mmdet RoIs ``[B * K, 5]`` (image index first)."""
    b, k = boxes.shape[:2]
    index = torch.arange(b, device=boxes.device).to(boxes.dtype)[:, None, None].expand(b, k, 1)
    return torch.cat([index, boxes], -1).reshape(-1, 5)


def paste_masks(masks: torch.Tensor, boxes: torch.Tensor, img_hw: tuple[Any, ...]) -> torch.Tensor:
    """mmdet's ``_do_paste_mask`` (``skip_empty=False``): RoI masks ``[..., M, M]`` into boxes ``[..., 4]`` of an
    image ``img_hw``, each pixel centre sampled bilinearly (``grid_sample``, ``align_corners=False``, zeros
    outside); ``[..., H, W]`` (the leading dimensions are the boxes', e.g. ``[N]`` or ``[B, K]``).

    The sampling grid is separable (a row's source depends on y only, a column's on x only), so the bilinear
    interpolation is two matrix products with hat-function weights ``max(0, 1 - |source - i|)`` (taps outside
    the mask are absent: zero padding): the same values as ``grid_sample`` up to float rounding, several times
    faster in ONNX Runtime than a ``GridSample`` over every pixel of every mask.
    """
    mh, mw = masks.shape[-2:]
    h, w = img_hw
    x1, y1, x2, y2 = boxes.split(1, dim=-1)  # [..., 1] each

    def weights(start: torch.Tensor, end: torch.Tensor, size: Any, taps: int) -> torch.Tensor:
        centres = (torch.arange(size, device=boxes.device).to(boxes.dtype) + 0.5)[None]
        # grid_sample's source coordinate of each pixel centre; a degenerate box (padding) samples nothing
        source = (centres - start) / (end - start).clamp(min=1e-6) * taps - 0.5  # [..., size]
        grid = torch.arange(taps, device=boxes.device).to(boxes.dtype)
        return (1 - (source[..., None] - grid).abs()).clamp(min=0)  # [..., size, taps]

    return weights(y1, y2, h, mh) @ masks @ weights(x1, x2, w, mw).transpose(-1, -2)


def detect_two_stage(model: Any, feats: Sequence[torch.Tensor], img_shape: torch.Tensor, img_hw: tuple[Any, ...],
                     layout: str, masks: str = 'full') -> tuple[torch.Tensor, ...]:
    """A two-stage detector's detections (mmdet's ``rpn_head.predict`` and ``roi_head.predict``,
    ``rescale=False``) from the neck's outputs, in ``layout``, followed by ``masks`` ``[B, N, H, W]``
    (``full``: pasted into the input of size ``img_hw``) or ``[B, N, M, M]`` (``roi``) mask probabilities when the
    model has a mask head (zeros past the detections). Proposals and boxes are clipped to ``img_shape`` ``[B, 2]``.
    """
    cfg = check_two_stage(model)
    rpn, roi_head = model.rpn_head, model.roi_head
    cls_scores, bbox_preds = rpn(feats)
    scores, _, level_ids, boxes = _candidates(rpn, cls_scores, bbox_preds, cfg['rpn_nms_pre'], img_shape,
                                              cfg['rpn_min_bbox_size'])
    # per-level NMS of the proposals (mmdet: batched_nms over level ids), the rpn max_per_img best kept
    _, _, proposals, proposal_valid = _class_nms_topk(boxes, scores, level_ids, len(cls_scores), cfg['rpn_iou'],
                                                      INVALID, cfg['rpn_max'])
    b, p = proposal_valid.shape
    rois = _with_image_index(proposals)
    bbox_head = roi_head.bbox_head
    cls_score, bbox_pred = bbox_head(_roi_features(roi_head.bbox_roi_extractor, feats, rois))
    num_classes = bbox_head.num_classes
    class_scores = cls_score.softmax(-1)[:, :num_classes].reshape(b, p * num_classes)
    boxes = bbox_head.bbox_coder.decode(rois[:, 1:].repeat_interleave(num_classes, 0), bbox_pred.reshape(-1, 4))
    boxes = clip_boxes(bbox_head.bbox_coder, boxes.reshape(b, p * num_classes, 4), img_shape)
    real = proposal_valid.repeat_interleave(num_classes, 1) & (class_scores > cfg['score_thr'])
    labels = torch.arange(num_classes, device=boxes.device).repeat(p)[None].expand(b, -1)
    dets = _class_nms_topk(boxes, _invalid_unless(class_scores, real), labels, num_classes, cfg['iou_threshold'],
                           cfg['score_thr'], cfg['max_per_img'])
    outputs = _layout_outputs(layout, *dets)
    if not roi_head.with_mask:
        return outputs
    _, det_labels, det_boxes, valid = dets
    k = det_boxes.shape[1]
    # the mask head and the pasting run on the real detections only (mmdet's too), not on the padding rows
    rows = torch.nonzero(valid.reshape(-1))[:, 0]
    rois = _with_image_index(det_boxes)[rows]
    logits = roi_head.mask_head(_roi_features(roi_head.mask_roi_extractor, feats, rois))
    size = logits.shape[-1]
    index = det_labels.reshape(-1)[rows].reshape(-1, 1, 1, 1).expand(-1, 1, size, size)
    probs = logits.gather(1, index)[:, 0].sigmoid()  # [R, M, M]
    out = probs.new_zeros((b * k, size, size)).index_put((rows, ), probs).reshape(b, k, size, size)
    if masks == 'full':
        # every row pasted, the padding's zero masks into its zero boxes (zeros), in the output's own [B, K, H, W]
        # shape: the output is written once, where scattering R pasted masks into a zero tensor copies it element
        # by element and a reshape may copy it again (most of the graph's time for a hundred 800 x 1216 masks)
        out = paste_masks(out, det_boxes, img_hw)
    return outputs + (out, )


class End2EndWrapper(nn.Module):
    """(``input``, ``img_shape``) -> a detector's detections in ``layout`` (and masks, see
    :func:`detect_two_stage`)."""

    model: Any  # an mmdet detector (duck-typed)

    def __init__(self, model: nn.Module, kind: str, layout: str, masks: str = 'full') -> None:
        super().__init__()
        check_layout(layout, kind)
        if layout == 'raw':
            raise ValueError('End2EndWrapper: the raw layout is export.ExportWrapper')
        if masks not in MASKS:
            raise ValueError(f'--masks must be one of {", ".join(MASKS)}, got {masks!r}')
        graph_meta(model, kind, layout, masks)  # checks the heads and their test_cfg
        nms_keep_op()  # an old torch fails here, before tracing
        self.model, self.kind, self.layout, self.masks = model, kind, layout, masks

    def output_names(self) -> list[str]:
        with_masks = self.kind == 'two_stage' and self.model.roi_head.with_mask
        return list(OUTPUT_NAMES[self.layout]) + (['masks'] if with_masks else [])

    def forward(self, input: torch.Tensor,  # noqa: A002  (the graph input's name)
                img_shape: torch.Tensor | None = None) -> tuple[torch.Tensor, ...]:
        """``img_shape`` ``[B, 2]`` int64: (H, W) of each image within ``input`` (default: all of ``input``)."""
        if img_shape is None:
            img_shape = full_shape(input)
        feats = self.model.extract_feat(input)
        if self.kind == 'two_stage':
            return detect_two_stage(self.model, feats, img_shape, tuple(input.shape[2:]), self.layout, self.masks)
        cls_scores, bbox_preds = self.model.bbox_head(feats)
        return detect(self.model.bbox_head, cls_scores, bbox_preds, img_shape, self.layout)


def full_shape(inputs: torch.Tensor) -> torch.Tensor:
    """The ``img_shape`` input ``[B, 2]`` int64 of images that fill ``inputs`` ``[B, 3, H, W]`` (no padding)."""
    return torch.tensor(list(inputs.shape[2:]), dtype=torch.int64).expand(inputs.shape[0], 2).contiguous()


def graph_meta(model: Any, kind: str, layout: str, masks: str = 'full') -> dict[str, Any]:
    """The metadata entries of an end-to-end graph: ``inputs`` (the graph's input names), ``layout``,
    ``max_per_img``, ``score_thr``, ``masks`` (``full``, ``roi``, or None without a mask head)."""
    cfg = check_two_stage(model) if kind == 'two_stage' else check_head(model.bbox_head)
    with_masks = kind == 'two_stage' and model.roi_head.with_mask
    return dict(inputs=list(INPUT_NAMES), layout=layout, max_per_img=cfg['max_per_img'], score_thr=cfg['score_thr'],
                masks=masks if with_masks else None)


def detections(outputs: list[Any], layout: str, mask_thr: float = 0.5) -> list[Any]:
    """The graph's outputs (numpy or torch, in ``layout``) as one mmdet ``InstanceData`` per image (padding
    dropped): ``bboxes`` ``[n, 4]``, ``scores`` ``[n]``, ``labels`` ``[n]`` int64 and, after a ``masks`` output,
    ``masks`` ``[n, H, W]`` (probabilities >= ``mask_thr``, mmdet's ``mask_thr_binary``)."""
    from mmengine.structures import InstanceData
    outs = [torch.as_tensor(o) for o in outputs]
    masks = outs.pop() if len(outs) == len(OUTPUT_NAMES.get(layout, ())) + 1 else None
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
        result = InstanceData(bboxes=boxes[i, :n].float(), scores=scores[i, :n].float(), labels=labels[i, :n].long())
        if masks is not None:
            result.masks = masks[i, :n] >= mask_thr
        results.append(result)
    return results


def compare_detections(model: Any, path: str, inputs: torch.Tensor, layout: str, box_tol: float = 1e-3,
                       score_tol: float = 1e-4, mask_tol: float = 1e-3, opt_level: str = 'all',
                       img_shape: torch.Tensor | None = None, session: Any = None) -> list[dict[str, Any]]:
    """An end-to-end graph (ONNX Runtime) against mmdet's ``predict`` (``rescale=False``) on the same ``inputs``,
    each image ``img_shape`` ``[B, 2]`` (H, W) within its padded tensor (default: all of it), given to mmdet as
    the ``img_shape`` metainfo. ``session``: an ONNX Runtime session on ``path`` to reuse (default: a new one at
    ``opt_level``).

    One row per image, as :func:`.runtime.compare`'s detection rows (matched as sets): ``count``, ``compared``,
    ``labels_equal``, ``box_err``, ``score_err``, ``mask_mismatch`` (graphs with full masks) and ``ok`` (every
    detection paired with its label, boxes within ``box_tol`` x the image size, scores within ``score_tol``, at
    most a ``mask_tol`` fraction of mask pixels differing).
    """
    from .runtime import _detection_row, _predict, make_session
    from .runtime import graph_meta as file_meta
    if img_shape is None:
        img_shape = full_shape(inputs)
    session = session or make_session(path, opt_level=opt_level)
    outputs = session.run(None, feeds(path, inputs, img_shape))
    if file_meta(path).get('masks') == 'roi':
        outputs = outputs[:-1]  # RoI masks: not compared (mmdet returns them pasted)
    with torch.no_grad():
        ref = _predict(model, inputs, img_shape.tolist())
    rows = []
    for i, (r, g) in enumerate(zip(ref, detections(outputs, layout))):
        if 'masks' not in g:
            r.pop('masks', None)
        else:  # mmdet pastes into the un-padded image
            h, w = img_shape[i].tolist()
            g.masks = g.masks[:, :h, :w]
        row = dict(name=f'detections[{i}]', **_detection_row(r, g, box_tol * max(inputs.shape[2:]), mask_tol))
        row['ok'] = row['ok'] and row['score_err'] <= score_tol
        rows.append(row)
    return rows


def feeds(path: str, inputs: torch.Tensor, img_shape: torch.Tensor) -> dict[str, Any]:
    """The ONNX Runtime inputs of the graph at ``path``: ``input`` and, when the graph takes it, ``img_shape``."""
    from .runtime import graph_meta as file_meta
    values = dict(input=inputs.numpy(), img_shape=img_shape.to(torch.int64).numpy())
    return {name: values[name] for name in file_meta(path).get('inputs', ['input'])}


def padded_shape(size: Sequence[int]) -> tuple[int, int]:
    """The image size within a padded input of ``size`` (H, W) that :func:`verify` checks: 7/8 of each side."""
    return size[0] - size[0] // 8, size[1] - size[1] // 8


def verify(model: Any, path: str, sizes: Sequence[Sequence[int]], layout: str, batch: int = 1, seed: int = 0,
           printer: Callable[[str], Any] | None = print) -> list[dict[str, Any]]:
    """:func:`compare_detections` on random inputs at every ``(H, W)`` of ``sizes``, each image filling the input
    and then only its top-left :func:`padded_shape` (a padded image, boxes clipped to it); prints and returns the
    rows.

    Raises AssertionError naming the first image whose detections differ.
    """
    from .runtime import make_session
    gen = torch.Generator().manual_seed(seed)
    rows: list[dict[str, Any]] = []
    session = make_session(path)
    for h, w in sizes:
        x = torch.randn(batch, 3, h, w, generator=gen)
        for img_hw in ((h, w), padded_shape((h, w))):
            img_shape = torch.tensor(img_hw, dtype=torch.int64).expand(batch, 2)
            for row in compare_detections(model, path, x, layout, img_shape=img_shape, session=session):
                row['size'], row['img_shape'] = (batch, h, w), img_hw
                row['status'] = 'ok' if row['ok'] and row['count'][0] else 'none' if row['ok'] else 'FAIL'
                rows.append(row)
                if printer:
                    detail = ', '.join(f'{k} {v:.2e}' if isinstance(v, float) else f'{k} {v}'
                                       for k, v in row.items() if k not in ('name', 'size', 'status', 'ok'))
                    printer(f'[{row["status"]:>4}] {batch}x3x{h}x{w} {row["name"]}: {detail}')
    failures = [row for row in rows if row['status'] == 'FAIL']
    if failures:
        raise AssertionError(f'ONNX Runtime differs from mmdet: {failures[0]}')
    if printer and all(row['status'] == 'none' for row in rows):
        printer('       no detection from either to compare (every score under test_cfg.score_thr, as with an '
                'untrained head)')
    return rows
