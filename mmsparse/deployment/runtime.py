"""Run exported graphs with ONNX Runtime: sessions, the mmdet / mmseg post-processing around them, and parity.

:func:`attach_onnx` makes a config's PyTorch model run its network through an ONNX file, keeping everything
around it in PyTorch (data preprocessor, mmdet's box decoding / NMS / RoI heads, mmseg's resizing), so the
mmdet / mmseg inferencers, and so ``tools/infer.py``, produce their usual pictures and results from it.
"""
import json
import os.path as osp

import numpy as np
import torch

from .export import META_KEY

#: ONNX Runtime graph optimisation levels by name
OPT_LEVELS = ('disable', 'basic', 'extended', 'all')


def graph_meta(path):
    """What :func:`~mmsparse.deployment.export.export_onnx` recorded in the file (kind, output names, ...)."""
    import onnx
    proto = onnx.load(path, load_external_data=False)
    for entry in proto.metadata_props:
        if entry.key == META_KEY:
            return json.loads(entry.value)
    raise ValueError(f'{path}: not exported by mmsparse (no {META_KEY!r} metadata); export it with '
                     'tools/deployment/export_onnx.py')


def make_session(path, threads=None, opt_level='all'):
    """A CPU ``onnxruntime.InferenceSession`` on ``path`` (``threads``: intra-op threads, default ORT's)."""
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

    def __init__(self, path, threads=None, opt_level='all'):
        self.path = path
        self.meta = graph_meta(path)
        self.session = make_session(path, threads, opt_level)

    def __call__(self, inputs):
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

    def grouped(self, inputs):
        """The outputs regrouped as the model returns them (per-level lists for a detector head)."""
        outs = self(inputs)
        lengths = self.meta.get('head_lengths')
        if not lengths:
            return tuple(outs)
        groups, start = [], 0
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


def modules_outside_graph(model, kind):
    """Names of ``model``'s top-level modules with parameters that a ``kind`` graph leaves to PyTorch."""
    covered = GRAPH_MODULES[kind]
    if covered is None:
        return []
    return sorted({name.split('.')[0] for name, _ in model.named_parameters() if name.split('.')[0] not in covered})


def attach_onnx(model, network, checkpoint=None, *, weights_loaded=False):
    """Route ``model``'s network through ``network`` (an :class:`OnnxNetwork` or a path); returns ``model``.

    Segmentors: ``encode_decode`` becomes the graph. Single-stage detectors: ``extract_feat`` returns the
    graph's head outputs and the head's ``forward`` passes them on, so ``bbox_head.predict`` runs mmdet's own
    ``predict_by_feat``. Two-stage detectors: ``extract_feat`` returns the graph's neck outputs, and the RPN and
    RoI heads run in PyTorch with ``model``'s weights: pass ``checkpoint`` (the PyTorch checkpoint the graph was
    exported from; it is loaded strictly into ``model``) or ``weights_loaded=True`` when ``model`` already holds
    them. Without either, a model with parameters outside the graph is refused (never run unloaded weights).
    """
    if isinstance(network, str):
        network = OnnxNetwork(network)
    kind = network.meta['kind']
    if kind == 'backbone':
        raise ValueError(f'{network.path} is a backbone-only graph (features, no predictions); export the '
                         'detector or segmentor without --backbone-only to run it on images')
    if kind not in GRAPH_MODULES:
        raise ValueError(f'{network.path}: unknown graph kind {kind!r}')
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


def _rel_err(actual, expected):
    """max |actual - expected| / max |expected| over the tensor (0 for two zero tensors)."""
    scale = expected.abs().max().item()
    diff = (actual.float() - expected.float()).abs().max().item() if expected.numel() else 0.
    return diff / scale if scale > 0 else diff


def _det_samples(inputs):
    from mmdet.structures import DetDataSample
    h, w = inputs.shape[2:]
    return [DetDataSample(metainfo=dict(img_shape=(h, w), pad_shape=(h, w), ori_shape=(h, w),
                                        batch_input_shape=(h, w), scale_factor=(1., 1.)))
            for _ in range(inputs.shape[0])]


def _predict(model, inputs):
    """Detections of a detector's network (data preprocessor skipped) on ``inputs``: ``InstanceData`` list."""
    samples = _det_samples(inputs)
    feats = model.extract_feat(inputs)
    if hasattr(model, 'roi_head'):
        proposals = model.rpn_head.predict(feats, samples, rescale=False)
        return model.roi_head.predict(feats, proposals, samples, rescale=False)
    return model.bbox_head.predict(feats, samples, rescale=False)


def match_detections(ref, got, box_tol):
    """Pair two detection sets (``bboxes [N, 4]``, ``labels [N]``), order ignored.

    Each reference detection, highest score first, takes the unpaired detection of ``got`` with its label whose
    box is nearest (max coordinate difference), if within ``box_tol`` pixels. Ties between scores reorder
    detections freely, so ranks are never compared. Returns ``[(i_ref, i_got), ...]``.
    """
    taken, pairs = set(), []
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


def _detection_row(r, g, box_tol, mask_tol):
    """One image's comparison of PyTorch (``r``) and ONNX Runtime (``g``) detections, matched as sets."""
    pairs = match_detections(r, g, box_tol)
    row = dict(count=(len(r), len(g)), compared=len(pairs),
               labels_equal=sorted(r.labels.tolist()) == sorted(g.labels.tolist()))
    ri = torch.tensor([i for i, _ in pairs], dtype=torch.long)
    gi = torch.tensor([j for _, j in pairs], dtype=torch.long)
    row['box_err'] = (r.bboxes[ri] - g.bboxes[gi]).abs().max().item() if pairs else 0.
    row['score_err'] = (r.scores[ri] - g.scores[gi]).abs().max().item() if pairs else 0.
    if 'masks' in r:
        row['mask_mismatch'] = (r.masks[ri] != g.masks[gi]).float().mean().item() if pairs else 0.
    row['ok'] = (len(r) == len(g) == len(pairs) and row['labels_equal'] and row.get('mask_mismatch', 0.) <= mask_tol)
    return row


def compare(model, network, inputs, box_tol=1e-3, mask_tol=1e-3):
    """PyTorch (``model``) against ONNX Runtime (``network``) on ``inputs``; a list of result rows.

    Each row: ``name``, ``rel_err`` (max |ORT - PyTorch| / max |PyTorch| over the tensor) for features, logits
    and raw head outputs; for detections, matched as sets (:func:`match_detections`, boxes within ``box_tol``
    x the image size), also ``count`` (PyTorch, ORT), ``compared`` (matched pairs), ``labels_equal`` (the same
    labels), ``box_err`` (max |ORT - PyTorch| box coordinate over the pairs, pixels), ``score_err``,
    ``mask_mismatch`` (fraction of mask pixels that differ, instance segmentation only) and ``ok`` (every
    detection paired, masks within ``mask_tol``).
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


def verify(model, path, sizes, batch=1, rtol=1e-4, box_tol=1e-3, seed=0, threads=None, printer=print):
    """Compare PyTorch and ONNX Runtime at every ``(H, W)`` in ``sizes``; prints and returns the rows.

    Raises AssertionError naming the first output that differs (relative error above ``rtol``, or detections
    whose count, labels or boxes differ).
    """
    network = path if isinstance(path, OnnxNetwork) else OnnxNetwork(path, threads)
    gen = torch.Generator().manual_seed(seed)
    all_rows, failures = [], []
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


def config_dataset_meta(cfg):
    """Class names (and palette) of ``cfg``'s test set: its ``metainfo``, else its dataset class's ``METAINFO``.

    What an inferencer built without a checkpoint should show instead of its default (COCO's or Cityscapes'
    names); ``None`` when the config names no dataset.
    """
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


def attach_to_inferencer(inferencer, onnx_path, threads=None, checkpoint=None, weights_loaded=False):
    """Make an mmdet ``DetInferencer`` / mmseg ``MMSegInferencer`` run its network through ``onnx_path``.

    The inferencer keeps its pipeline, data preprocessor, post-processing and drawing, so its pictures and
    results have the PyTorch path's form. ``threads``: ONNX Runtime intra-op threads (default ORT's);
    ``checkpoint`` / ``weights_loaded``: as in :func:`attach_onnx` (two-stage detectors need the weights).
    """
    attach_onnx(inferencer.model, OnnxNetwork(onnx_path, threads), checkpoint, weights_loaded=weights_loaded)
    return inferencer
