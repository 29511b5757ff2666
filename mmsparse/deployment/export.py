"""Build a model from a config and export it to ONNX with ``torch.onnx`` (the ``torch.export`` based exporter).

What the graph computes (its contract) depends on the model, see :func:`model_kind` and ``docs/deployment.md``:

* ``backbone`` (``--backbone-only``, or a config whose model is a bare backbone): ``input`` -> ``feat0`` ...
* ``segmentor`` (mmseg ``EncoderDecoder``): ``input`` -> ``seg_logits`` ``[B, num_classes, H, W]``, what
  ``EncoderDecoder.encode_decode`` returns.
* ``single_stage`` detector (RetinaNet, ...), ``outputs='raw'``: ``input`` -> the head's raw outputs per level
  (``cls_score0`` ..., ``bbox_pred0`` ...); mmdet's own ``predict_by_feat`` (anchors, decoding, NMS) runs after
  ONNX Runtime.
* ``two_stage`` detector (Mask R-CNN, ...), ``outputs='raw'``: ``input`` -> the neck's outputs ``neck0`` ...;
  mmdet's RPN and RoI heads (proposals, RoIAlign, NMS, masks) run after ONNX Runtime.
* either detector, ``outputs='mmdeploy'`` / ``'efficientnms'``: ``input`` -> detections (and masks), the
  post-processing inside the graph (:mod:`.end2end`).

``input`` is the image after the data preprocessor (normalised, padded), float32 ``[B, 3, H, W]``; an end-to-end
graph also takes ``img_shape`` int64 ``[B, 2]``, each image's (H, W) within ``input`` before padding.
"""
from __future__ import annotations

import json
import os
import warnings
from contextlib import contextmanager, nullcontext
from typing import Any, Iterator, Sequence

import torch
import torch.nn as nn

from .dynamic import check_dynamic_example, explain_export_failure
from .pooling import size_generic_pooling

#: ONNX opset of the exported graphs
OPSET = 18
#: smallest / largest height and width (below 64 the stride-32 map would be 1 x 1, a size torch.export specialises)
MIN_SIZE, MAX_SIZE = 64, 8192
#: smallest example size of a dynamic detector export (its coarsest FPN level, stride 128, is then 2 x 2)
DET_EXAMPLE_SIZE = 256
KINDS = ('backbone', 'segmentor', 'single_stage', 'two_stage')
#: the key of the ONNX metadata entry that records what the graph is (read back by :mod:`.runtime`)
META_KEY = 'mmsparse'


def load_config(path: str, cfg_options: dict | None = None) -> Any:
    """:func:`mmsparse.apis.load_config` for mmdet / mmseg configs only (``ValueError`` for another scope)."""
    from mmsparse.apis import load_config as _load_config
    cfg = _load_config(path, cfg_options)
    if cfg.get('default_scope') not in ('mmdet', 'mmseg'):
        raise ValueError(f'{path}: default_scope is {cfg.get("default_scope")!r}; the exporter takes mmdet or '
                         'mmseg configs')
    return cfg


def build_model(cfg: Any, checkpoint: str | None = None) -> nn.Module:
    """The config's model in eval mode on the CPU, with ``checkpoint``'s weights when given.

    Without a checkpoint the weights are ``init_weights()``'s (``Pretrained`` dropped, nothing downloaded): fine
    for checking the export, meaningless as predictions.
    """
    from mmsparse.apis import build_model as _build_model
    return _build_model(cfg, checkpoint)


def model_kind(model: nn.Module, backbone_only: bool = False) -> str:
    """``'backbone'``, ``'segmentor'``, ``'single_stage'`` or ``'two_stage'``; ValueError for other models."""
    if backbone_only:
        if not isinstance(getattr(model, 'backbone', None), nn.Module):
            raise ValueError(f'--backbone-only: {type(model).__name__} has no backbone')
        return 'backbone'
    if hasattr(model, 'encode_decode') and hasattr(model, 'decode_head'):
        return 'segmentor'
    if hasattr(model, 'roi_head') and hasattr(model, 'rpn_head'):
        return 'two_stage'
    if hasattr(model, 'bbox_head') and hasattr(model, 'extract_feat'):
        return 'single_stage'
    raise ValueError(f'unsupported model {type(model).__name__}: the exporter takes mmseg EncoderDecoder '
                     'segmentors, mmdet single-stage (bbox_head) and two-stage (rpn_head + roi_head) detectors, '
                     'or any of their backbones with --backbone-only')


def _flatten(outputs: Sequence[Any]) -> tuple[tuple[torch.Tensor, ...], list[int]]:
    """Head outputs (tuples of per-level lists) as one flat tuple, with the list lengths."""
    flat: list[torch.Tensor] = []
    lengths: list[int] = []
    for group in outputs:
        group = list(group) if isinstance(group, (list, tuple)) else [group]
        flat += group
        lengths.append(len(group))
    return tuple(flat), lengths


class ExportWrapper(nn.Module):
    """``input`` -> the graph's outputs for ``kind`` (see the module docstring), as a flat tuple."""

    model: Any  # an mmdet / mmseg model (duck-typed)

    def __init__(self, model: nn.Module, kind: str) -> None:
        super().__init__()
        self.model, self.kind = model, kind

    def forward(self, input: torch.Tensor) -> tuple[torch.Tensor, ...]:  # noqa: A002  (the graph input's name)
        model = self.model
        if self.kind == 'backbone':
            return tuple(model.backbone(input))
        if self.kind == 'segmentor':
            h, w = input.shape[2:]
            # encode_decode reads the first image's meta only; one entry keeps the batch symbolic
            metas = [dict(img_shape=(h, w), pad_shape=(h, w), ori_shape=(h, w))]
            return (model.encode_decode(input, metas), )
        feats = model.extract_feat(input)
        if self.kind == 'two_stage':
            return tuple(feats)
        return _flatten(model.bbox_head(feats))[0]


def output_names(wrapper: ExportWrapper, example: torch.Tensor) -> tuple[list[str], dict[str, Any]]:
    """Output names and the grouping the runtime needs to rebuild the head's lists."""
    with torch.no_grad():
        if wrapper.kind == 'backbone':
            n = len(wrapper(example))
            return [f'feat{i}' for i in range(n)], {}
        if wrapper.kind == 'segmentor':
            return ['seg_logits'], {}
        feats = wrapper.model.extract_feat(example)
        if wrapper.kind == 'two_stage':
            return [f'neck{i}' for i in range(len(feats))], {}
        _, lengths = _flatten(wrapper.model.bbox_head(feats))
    prefixes = ['cls_score', 'bbox_pred'] if len(lengths) == 2 else [f'head{i}_' for i in range(len(lengths))]
    if len(lengths) == 3:  # heads with a third per-level output (centerness, IoU, ...)
        prefixes = ['cls_score', 'bbox_pred', 'aux']
    names = [f'{p}{level}' for p, n in zip(prefixes, lengths) for level in range(n)]
    return names, dict(head_lengths=lengths)


def check_shape(shape: Sequence[int]) -> tuple[int, ...]:
    """``shape`` as ``(H, W)``; ``ValueError`` unless two integers in [``MIN_SIZE``, ``MAX_SIZE``]."""
    if len(shape) != 2 or any(not isinstance(s, int) for s in shape):
        raise ValueError(f'--shape takes two integers H W, got {shape}')
    if any(s < MIN_SIZE or s > MAX_SIZE for s in shape):
        raise ValueError(f'--shape {shape[0]} {shape[1]}: height and width must lie in [{MIN_SIZE}, {MAX_SIZE}]')
    return tuple(shape)


class size_generic_upsampling:
    """Context manager: mmseg ``Upsample`` modules (Semantic FPN's scale heads) upsample by their scale factor."""

    # why: Upsample computes its output size as int(size * scale), which the exporter evaluates at the example
    # size and bakes into the graph; the scale factor itself gives the same values for these heads' integer
    # factors and stays symbolic

    def __init__(self, model: nn.Module) -> None:
        self.modules: list[Any] = []
        try:
            from mmseg.models.utils import Upsample
        except ImportError:
            return
        self.modules = [m for m in model.modules() if isinstance(m, Upsample) and not m.size and m.scale_factor]

    def __enter__(self) -> size_generic_upsampling:
        import torch.nn.functional as F
        for m in self.modules:
            m.forward = (lambda mod: lambda x: F.interpolate(x, scale_factor=mod.scale_factor, mode=mod.mode,
                                                             align_corners=mod.align_corners))(m)
        return self

    def __exit__(self, *exc: object) -> None:
        for m in self.modules:
            del m.forward  # back to the class's forward


def check_dynamic(model: nn.Module) -> None:
    """ValueError when ``model`` holds a module whose ONNX form would be right at the example size only.

    That is adaptive max pooling to a grid larger than 1 x 1 (adaptive average pooling exports size-generic
    through :class:`.pooling.size_generic_pooling`).
    """
    for name, module in model.named_modules():
        if isinstance(module, nn.AdaptiveMaxPool2d):
            size: Any = module.output_size
            size = (size, size) if isinstance(size, int) or size is None else tuple(size)
            if any(s not in (1, None) for s in size):
                raise ValueError(f'--dynamic: {name} ({type(module).__name__} to {module.output_size}) has no '
                                 'size-generic ONNX form; export this model at a fixed --shape (one graph per size)')


#: names of the input's dynamic axes (``None``: a fixed axis)
AXIS_NAMES = ('batch', None, 'height', 'width')


def name_dynamic_axes(onnx_program: torch.onnx.ONNXProgram) -> None:
    """Name the graph input's symbolic axes (``s31`` ... as traced) ``batch``, ``height``, ``width``.

    Outputs whose sizes follow them are renamed alike, expressions included (``(height//2)``).
    """
    # why: torch.onnx keeps the tracer's symbols, not the torch.export.Dim names
    dims: Any = onnx_program.model.graph.inputs[0].shape
    mapping = {dim.value: name for dim, name in zip(dims, AXIS_NAMES)
               if name is not None and isinstance(getattr(dim, 'value', None), str)}
    onnx_program.rename_axes(mapping)


#: onnxscript rewrite rules left out of torch.onnx's final graph optimisation. ``SlicesSplit`` (two Slices that
#: halve a tensor's last axis -> one Split) tries every pair of Slice nodes in the graph: on STViT-S's 834 Slices
#: that took 75 s, most of a several-minute export (the rest of the optimiser: 3 s), and found no such pair.
SKIPPED_REWRITE_RULES = ('SlicesSplit', )


@contextmanager
def without_slow_rewrites() -> Iterator[None]:
    """Within the block, torch.onnx's optimiser (onnxscript's ``optimize_ir``, which reads the rule list when it
    runs) applies every default rewrite rule except :data:`SKIPPED_REWRITE_RULES`; constant folding, dead-node
    removal, initializer lifting and deduplication and CSE are unchanged. A no-op for an onnxscript without that
    list."""
    try:
        from onnxscript import rewriter
        rules = rewriter._DEFAULT_REWRITE_RULES
    except (ImportError, AttributeError):
        yield
        return
    rewriter._DEFAULT_REWRITE_RULES = tuple(r for r in rules if getattr(r, 'name', None) not in SKIPPED_REWRITE_RULES)
    try:
        yield
    finally:
        rewriter._DEFAULT_REWRITE_RULES = rules


def export_onnx(model: nn.Module, out: str | os.PathLike, shape: Sequence[int], kind: str, dynamic: bool = False,
                batch: int = 1, opset: int = OPSET, extra_meta: dict[str, Any] | None = None,
                outputs: str = 'raw', masks: str = 'full') -> list[str]:
    """Export ``model`` (built by :func:`build_model`) as ``kind`` to ``out``; returns the graph's output names.

    Args:
        shape: the example's ``(H, W)``.
        dynamic: batch, height and width are symbolic (every H, W in [``MIN_SIZE``, ``MAX_SIZE``], sizes the
            model pads itself included); otherwise the graph takes exactly ``[batch, 3, *shape]``.
        extra_meta: more entries for the graph's ``mmsparse`` metadata.
        outputs: the output layout, one of :data:`.end2end.LAYOUTS`: ``raw`` (the module docstring), or a
            detector's detections (``mmdeploy``, ``efficientnms``: :mod:`.end2end`).
        masks: a two-stage end-to-end graph's masks: ``full`` (pasted into the input) or ``roi``.
    """
    if kind not in KINDS:
        raise ValueError(f'kind must be one of {KINDS}, got {kind!r}')
    from . import end2end
    end2end.check_layout(outputs, kind)
    h, w = check_shape(shape)
    example_hw = (h, w)
    if dynamic:
        # the exporter specialises every size that is 1 in the example: an example batch of 1 would fix the
        # batch, a detector's stride-128 level being 1 x 1 would fix H and W; the graph serves other sizes alike
        batch = max(batch, 2)
        if kind in ('single_stage', 'two_stage'):
            example_hw = (max(h, DET_EXAMPLE_SIZE), max(w, DET_EXAMPLE_SIZE))
    if dynamic:
        check_dynamic(model)
    example = torch.randn(batch, 3, *example_hw)
    wrapper: nn.Module
    if outputs == 'raw':
        wrapper = ExportWrapper(model, kind).eval()
        names, grouping = output_names(wrapper, example)
        grouping['layout'] = 'raw'
    else:
        e2e = end2end.End2EndWrapper(model, kind, outputs, masks).eval()
        wrapper, names, grouping = e2e, e2e.output_names(), end2end.graph_meta(model, kind, outputs, masks)
    args: tuple[torch.Tensor, ...] = (example, )
    input_names = ['input']
    if outputs != 'raw':  # the images' sizes before padding: here all of the example
        args, input_names = (example, end2end.full_shape(example)), list(end2end.INPUT_NAMES)
    dynamic_shapes: dict[str, Any] | None = None
    # the network up to its backbone, called on the image alone: where the example's BRA region sizes are read
    probe = ExportWrapper(model, 'backbone') if isinstance(getattr(model, 'backbone', None), nn.Module) else wrapper
    if dynamic:
        check_dynamic_example(probe, example)  # one line before the trace: BRA regions of one token
        dim = torch.export.Dim
        batch_dim = dim('batch', min=1, max=1024)
        dynamic_shapes = {'input': {0: batch_dim, 2: dim('height', min=MIN_SIZE, max=MAX_SIZE),
                                    3: dim('width', min=MIN_SIZE, max=MAX_SIZE)}}
        if outputs != 'raw':
            dynamic_shapes['img_shape'] = {0: batch_dim}
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter('ignore')
        # deferred runtime asserts: the shape arithmetic of the padding operators yields guards that the
        # symbolic solver cannot prove for every size (true ones); as asserts they do not specialise the graph
        with size_generic_upsampling(model), size_generic_pooling(model) if dynamic else nullcontext():
            try:
                program = torch.export.export(wrapper, args, dynamic_shapes=dynamic_shapes, strict=False,
                                              prefer_deferred_runtime_asserts_over_guards=True)
            except Exception as err:  # --dynamic: one line instead of the tracer's report
                message = explain_export_failure(err, probe, example) if dynamic else None
                if message is None:
                    raise
                raise ValueError(message) from None
        with without_slow_rewrites():
            onnx_program: Any = torch.onnx.export(  # dynamo=True: an ONNXProgram
                program, args, input_names=input_names, output_names=names, opset_version=opset, dynamo=True,
                verbose=False, custom_translation_table=end2end.translation_table() if outputs != 'raw' else None)
        if dynamic:
            name_dynamic_axes(onnx_program)
    meta = dict(kind=kind, outputs=names, dynamic=bool(dynamic), shape=[batch, 3, *example_hw], opset=opset, **grouping,
                **(extra_meta or {}))
    proto = onnx_program.model_proto
    entry = proto.metadata_props.add()
    entry.key, entry.value = META_KEY, json.dumps(meta)
    import onnx
    onnx.save(proto, out)
    return names


def graph_ops(path: str | os.PathLike) -> dict[str, int]:
    """``{op_type: count}`` of the ONNX file at ``path`` (nested function bodies included), sorted by name."""
    import onnx
    proto = onnx.load(path, load_external_data=False)
    counts: dict[str, int] = {}
    nodes = list(proto.graph.node) + [n for f in proto.functions for n in f.node]
    for node in nodes:
        key = node.op_type if node.domain in ('', 'ai.onnx') else f'{node.domain}::{node.op_type}'
        counts[key] = counts.get(key, 0) + 1
    return dict(sorted(counts.items()))
