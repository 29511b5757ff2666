"""Run exported graphs with ONNX Runtime: sessions, the mmdet / mmseg post-processing around them, and parity.

:func:`attach_onnx` runs a PyTorch model's network through an ONNX file and keeps the rest in PyTorch (data
preprocessor, box decoding / NMS / RoI heads, resizing), so the inferencers and ``tools/infer.py`` work unchanged.
"""
from __future__ import annotations

import json
import os.path as osp
from typing import Any, Callable, Iterable, Sequence

import numpy as np
import torch
import torch.nn as nn

from .export import META_KEY

#: ONNX Runtime graph optimisation levels by name
OPT_LEVELS = ('disable', 'basic', 'extended', 'all')


def graph_meta(path: str) -> dict[str, Any]:
    """What :func:`~mmsparse.deployment.export.export_onnx` recorded in the file (kind, output names, ...)."""
    import onnx
    proto = onnx.load(path, load_external_data=False)
    for entry in proto.metadata_props:
        if entry.key == META_KEY:
            return json.loads(entry.value)
    raise ValueError(f'{path}: not exported by mmsparse (no {META_KEY!r} metadata); export it with '
                     'tools/deployment/export_onnx.py')


def make_session(path: str, threads: int | None = None, opt_level: str = 'all') -> Any:
    """A CPU ``onnxruntime.InferenceSession`` on ``path``.

    Args:
        threads: intra-op threads (default ORT's).
        opt_level: one of :data:`OPT_LEVELS`.
    """
    import onnxruntime as ort
    if not osp.isfile(path):
        raise FileNotFoundError(f'ONNX file: no such file: {path}')
    if opt_level not in OPT_LEVELS:
        raise ValueError(f'opt_level must be one of {OPT_LEVELS}, got {opt_level!r}')
    options = ort.SessionOptions()
    options.graph_optimization_level = {
        'disable': ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
        'basic': ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
        'extended': ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
        'all': ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    }[opt_level]
    if threads is not None:
        options.intra_op_num_threads = int(threads)
        options.inter_op_num_threads = 1
    return ort.InferenceSession(path, options, providers=['CPUExecutionProvider'])


class OnnxNetwork:
    """An exported graph as a function of a ``[B, 3, H, W]`` tensor, returning torch tensors."""

    def __init__(self, path: str, threads: int | None = None, opt_level: str = 'all') -> None:
        self.path = path
        self.meta = graph_meta(path)
        self.session = make_session(path, threads, opt_level)

    def __call__(self, inputs: torch.Tensor) -> list[torch.Tensor]:
        """The graph's outputs on ``inputs``, on ``inputs``' device; ``ValueError`` for a shape it does not take.

        Shapes:
            inputs: ``[B, 3, H, W]`` (exactly the export's shape unless exported with ``--dynamic``).
        """
        if not torch.is_tensor(inputs) or inputs.dim() != 4 or inputs.shape[1] != 3:
            raise ValueError(f'{self.path}: the graph takes a [B, 3, H, W] tensor, got '
                             f'{tuple(inputs.shape) if torch.is_tensor(inputs) else type(inputs).__name__}')
        fixed = self.meta['shape']
        if not self.meta['dynamic'] and list(inputs.shape) != fixed:
            raise ValueError(f'{self.path}: exported for inputs of shape {fixed} only (export with --dynamic for '
                             f'other sizes), got {list(inputs.shape)}')
        array = inputs.detach().cpu().float().contiguous().numpy()
        outs = self.session.run(self.meta['outputs'], {'input': array})
        return [torch.from_numpy(np.ascontiguousarray(o)).to(inputs.device) for o in outs]

    def grouped(self, inputs: torch.Tensor) -> tuple[Any, ...]:
        """The outputs regrouped as the model returns them (per-level lists for a detector head)."""
        outs = self(inputs)
        lengths = self.meta.get('head_lengths')
        if not lengths:
            return tuple(outs)
        groups: list[list[torch.Tensor]] = []
        start = 0
        for n in lengths:
            groups.append(outs[start:start + n])
            start += n
        return tuple(groups)


#: the model's top-level modules that each graph kind computes (None: all of them); the parameters of every
#: other module are used outside the graph, in PyTorch, and must come from a checkpoint
GRAPH_MODULES = {
    'segmentor': None,
    'single_stage': ('backbone', 'neck', 'bbox_head'),
    'two_stage': ('backbone', 'neck')
}


def modules_outside_graph(model: nn.Module, kind: str) -> list[str]:
    """Names of ``model``'s top-level modules with parameters that a ``kind`` graph leaves to PyTorch."""
    covered = GRAPH_MODULES[kind]
    if covered is None:
        return []
    return sorted({name.split('.')[0] for name, _ in model.named_parameters() if name.split('.')[0] not in covered})


def attach_onnx(model: Any, network: OnnxNetwork | str, checkpoint: str | None = None, *,
                weights_loaded: bool = False) -> Any:
    """Route ``model``'s network through ``network`` (an :class:`OnnxNetwork` or a path); returns ``model``.

    The graph replaces ``encode_decode`` (segmentors) or ``extract_feat`` (detectors; a single-stage head's
    ``forward`` then passes the graph's outputs on to mmdet's ``predict_by_feat``). ``ValueError`` when the graph
    kind does not fit ``model``, or for an end-to-end graph (its metadata ``layout`` is not ``raw``): that one
    already holds the detections.

    Args:
        checkpoint: the PyTorch checkpoint the graph was exported from, loaded strictly into ``model``, for the
            modules that run outside the graph (a two-stage detector's RPN and RoI heads).
        weights_loaded: ``model`` already holds those weights. Without either, a model with parameters
            outside the graph is refused (never run unloaded weights).
    """
    if isinstance(network, str):
        network = OnnxNetwork(network)
    kind = network.meta['kind']
    if kind == 'backbone':
        raise ValueError(f'{network.path} is a backbone-only graph (features, no predictions); export the '
                         'detector or segmentor without --backbone-only to run it on images')
    if kind not in GRAPH_MODULES:
        raise ValueError(f'{network.path}: unknown graph kind {kind!r}')
    layout = network.meta.get('layout', 'raw')
    if layout != 'raw':
        raise ValueError(f'{network.path} already holds the detections (layout {layout!r}, NMS in the graph): run '
                         'it with tools/infer.py MODEL.onnx INPUT, or export with --outputs raw for --backend '
                         'onnxruntime')
    if kind == 'segmentor':
        if not hasattr(model, 'encode_decode'):
            raise ValueError(f'{network.path} holds a segmentor graph but the config builds {type(model).__name__}')
    elif kind == 'two_stage':
        if not hasattr(model, 'roi_head'):
            raise ValueError(f'{network.path} holds a two-stage detector graph but the config builds '
                             f'{type(model).__name__}')
    elif not hasattr(model, 'bbox_head') or hasattr(model, 'roi_head'):
        raise ValueError(f'{network.path} holds a single-stage detector graph but the config builds '
                         f'{type(model).__name__}')
    outside = modules_outside_graph(model, kind)
    if checkpoint is not None:
        from mmengine.runner import load_checkpoint
        if not osp.isfile(checkpoint):
            raise FileNotFoundError(f'checkpoint: no such file: {checkpoint}')
        load_checkpoint(model, checkpoint, map_location='cpu', strict=True, logger='silent')
    elif outside and not weights_loaded:
        source = network.meta.get('checkpoint')
        hint = f' (it was exported from {source})' if source else ''
        raise ValueError(
            f'{network.path} is a {kind.replace("_", "-")} detector graph: {", ".join(outside)} run outside it, in '
            f'PyTorch, and need the weights of the checkpoint the graph was exported from{hint}. Pass it: '
            'tools/infer.py ... --backend onnxruntime --weights CHECKPOINT, or attach_onnx(model, graph, '
            'checkpoint=CHECKPOINT)')
    if kind == 'segmentor':
        model.encode_decode = lambda inputs, batch_img_metas: network(inputs)[0]
    elif kind == 'two_stage':
        model.extract_feat = lambda inputs: tuple(network(inputs))
    else:
        model.extract_feat = network.grouped
        model.bbox_head.forward = lambda head_outputs: head_outputs
    model.onnx_network = network
    return model


def _rel_err(actual: torch.Tensor, expected: torch.Tensor) -> float:
    """max |actual - expected| / max |expected| over the tensor (0 for two zero tensors)."""
    scale = expected.abs().max().item()
    diff = (actual.float() - expected.float()).abs().max().item() if expected.numel() else 0.
    return diff / scale if scale > 0 else diff


def _det_samples(inputs: torch.Tensor, img_shapes: Sequence[Sequence[int]] | None = None) -> list[Any]:
    from mmdet.structures import DetDataSample
    h, w = inputs.shape[2:]
    shapes = img_shapes if img_shapes is not None else [(h, w)] * inputs.shape[0]
    # ori_shape = img_shape with scale factor 1: masks are pasted into the un-padded image, as rescale=False does
    return [DetDataSample(metainfo=dict(img_shape=tuple(shape), pad_shape=(h, w), ori_shape=tuple(shape),
                                        batch_input_shape=(h, w), scale_factor=(1., 1.)))
            for shape in shapes]


def _predict(model: Any, inputs: torch.Tensor, img_shapes: Sequence[Sequence[int]] | None = None) -> list[Any]:
    """Detections of a detector's network (data preprocessor skipped) on ``inputs``: ``InstanceData`` list.

    ``img_shapes``: each image's (H, W) within ``inputs`` before padding (default: all of ``inputs``).
    """
    samples = _det_samples(inputs, img_shapes)
    feats = model.extract_feat(inputs)
    if hasattr(model, 'roi_head'):
        proposals = model.rpn_head.predict(feats, samples, rescale=False)
        return model.roi_head.predict(feats, proposals, samples, rescale=False)
    return model.bbox_head.predict(feats, samples, rescale=False)


def match_detections(ref: Any, got: Any, box_tol: float) -> list[tuple[int, int]]:
    """Pair two detection sets (``InstanceData``), order ignored; returns ``[(i_ref, i_got), ...]``.

    Each reference detection, highest score first, takes the nearest unpaired ``got`` box (max coordinate
    difference) with its label, if within ``box_tol`` pixels.

    Shapes:
        bboxes: ``[N, 4]``; labels, scores: ``[N]``.
    """
    # why sets, not ranks: ties between scores reorder detections freely
    taken: set[int] = set()
    pairs: list[tuple[int, int]] = []
    for i in torch.argsort(ref.scores, descending=True, stable=True).tolist():
        candidates = [j for j in range(len(got)) if j not in taken and int(got.labels[j]) == int(ref.labels[i])]
        if not candidates:
            continue
        dist = [(got.bboxes[j] - ref.bboxes[i]).abs().max().item() for j in candidates]
        best = min(range(len(candidates)), key=dist.__getitem__)
        if dist[best] <= box_tol:
            taken.add(candidates[best])
            pairs.append((i, candidates[best]))
    return pairs


def _detection_row(r: Any, g: Any, box_tol: float, mask_tol: float) -> dict[str, Any]:
    """One image's comparison of PyTorch (``r``) and ONNX Runtime (``g``) detections, matched as sets."""
    pairs = match_detections(r, g, box_tol)
    row: dict[str, Any] = dict(count=(len(r), len(g)), compared=len(pairs),
                               labels_equal=sorted(r.labels.tolist()) == sorted(g.labels.tolist()))
    ri = torch.tensor([i for i, _ in pairs], dtype=torch.long)
    gi = torch.tensor([j for _, j in pairs], dtype=torch.long)
    row['box_err'] = (r.bboxes[ri] - g.bboxes[gi]).abs().max().item() if pairs else 0.
    row['score_err'] = (r.scores[ri] - g.scores[gi]).abs().max().item() if pairs else 0.
    if 'masks' in r:
        row['mask_mismatch'] = (r.masks[ri] != g.masks[gi]).float().mean().item() if pairs else 0.
    row['ok'] = (len(r) == len(g) == len(pairs) and row['labels_equal'] and row.get('mask_mismatch', 0.) <= mask_tol)
    return row


def compare(model: Any, network: OnnxNetwork, inputs: torch.Tensor, box_tol: float = 1e-3,
            mask_tol: float = 1e-3) -> list[dict[str, Any]]:
    """PyTorch (``model``) against ONNX Runtime (``network``) on ``inputs``; a list of result rows.

    Each row has ``name`` and, for features, logits and raw head outputs, ``rel_err`` (max |ORT - PyTorch| /
    max |PyTorch| over the tensor). Detections are matched as sets (:func:`match_detections`) and add ``count``
    (PyTorch, ORT), ``compared`` (pairs), ``labels_equal``, ``box_err`` (pixels), ``score_err``,
    ``mask_mismatch`` (fraction of mask pixels, instance segmentation only) and ``ok`` (every detection paired,
    masks within ``mask_tol``).

    Args:
        box_tol: the largest box coordinate difference of a pair, as a fraction of the image size.
        mask_tol: the largest fraction of differing mask pixels.
    """
    kind = network.meta['kind']
    wrapper_outputs = network(inputs)
    from .export import ExportWrapper
    with torch.no_grad():
        expected = ExportWrapper(model, kind)(inputs)
    rows = [dict(name=name, rel_err=_rel_err(a, e)) for name, a, e in zip(network.meta['outputs'],
                                                                          wrapper_outputs, expected)]
    if kind in ('single_stage', 'two_stage'):
        import copy
        with torch.no_grad():
            ref = _predict(model, inputs)
            got = _predict(attach_onnx(copy.deepcopy(model), network, weights_loaded=True), inputs)
        scale = max(inputs.shape[2:])
        for i, (r, g) in enumerate(zip(ref, got)):
            rows.append(dict(name=f'detections[{i}]', **_detection_row(r, g, box_tol * scale, mask_tol)))
    return rows


def verify(model: Any, path: str | OnnxNetwork, sizes: Iterable[Sequence[int]], batch: int = 1, rtol: float = 1e-4,
           box_tol: float = 1e-3, seed: int = 0, threads: int | None = None,
           printer: Callable[[str], Any] | None = print) -> list[dict[str, Any]]:
    """Compare PyTorch and ONNX Runtime at every ``(H, W)`` in ``sizes`` (random inputs); prints, returns the rows.

    Raises AssertionError naming the first output that differs (relative error above ``rtol``, or detections
    whose count, labels or boxes differ). ``printer=None`` prints nothing.
    """
    network = path if isinstance(path, OnnxNetwork) else OnnxNetwork(path, threads)
    gen = torch.Generator().manual_seed(seed)
    all_rows: list[dict[str, Any]] = []
    failures: list[dict[str, Any]] = []
    for h, w in sizes:
        inputs = torch.randn(batch, 3, h, w, generator=gen)
        for row in compare(model, network, inputs, box_tol):
            row['size'] = (batch, h, w)
            bad = row['rel_err'] > rtol if 'rel_err' in row else not row['ok']
            empty = not bad and row.get('count') == (0, 0)
            row['status'] = 'FAIL' if bad else 'none' if empty else 'ok'
            if bad:
                failures.append(row)
            all_rows.append(row)
            if printer:
                detail = (f'rel_err {row["rel_err"]:.2e} (limit {rtol:g})' if 'rel_err' in row else
                          ', '.join(f'{k} {v:.2e}' if isinstance(v, float) else f'{k} {v}' for k, v in row.items()
                                    if k not in ('name', 'size', 'status', 'ok')))
                printer(f'[{row["status"]:>4}] {batch}x3x{h}x{w} {row["name"]}: {detail}')
                if empty:
                    printer('       no detection from either to compare (every score under the score '
                            'threshold, as with an untrained head): only the raw outputs above were compared')
    if failures:
        raise AssertionError(f'ONNX Runtime differs from PyTorch: {failures[0]}')
    return all_rows


def config_dataset_meta(cfg: Any) -> dict[str, Any] | None:
    """Class names (and palette) of ``cfg``'s test set: its ``metainfo``, else its dataset class's ``METAINFO``.

    ``None`` when the config names no dataset.
    """
    # why: an inferencer built without a checkpoint would otherwise show its default (COCO's or Cityscapes') names
    dataset = cfg.get('test_dataloader', {}).get('dataset', {})
    while 'dataset' in dataset and 'metainfo' not in dataset:  # wrappers (RepeatDataset, ConcatDataset, ...)
        dataset = dataset['dataset']
    if dataset.get('metainfo'):
        return dict(dataset['metainfo'])
    if 'type' not in dataset:
        return None
    from mmengine.registry import DATASETS, DefaultScope
    scope = cfg.get('default_scope')
    with DefaultScope.overwrite_default_scope(scope):
        registry = DATASETS
        if scope:
            import importlib
            registry = importlib.import_module(f'{scope}.registry').DATASETS
            importlib.import_module(f'{scope}.datasets')  # registers the dataset classes
        cls = registry.get(dataset['type']) if isinstance(dataset['type'], str) else dataset['type']
    meta = getattr(cls, 'METAINFO', None)
    return dict(meta) if meta else None


def attach_to_inferencer(inferencer: Any, onnx_path: str, threads: int | None = None, checkpoint: str | None = None,
                         weights_loaded: bool = False) -> Any:
    """Make an mmdet ``DetInferencer`` / mmseg ``MMSegInferencer`` run its network through ``onnx_path``.

    The inferencer keeps its pipeline, preprocessing, post-processing and drawing. ``threads``: ONNX Runtime
    intra-op threads (default ORT's); ``checkpoint`` / ``weights_loaded``: as in :func:`attach_onnx`.
    """
    attach_onnx(inferencer.model, OnnxNetwork(onnx_path, threads), checkpoint, weights_loaded=weights_loaded)
    return inferencer
