"""Checks that stop a run before it starts: datasets on disk, a local pretrained checkpoint, torchvision for
``torchvision://`` checkpoints, backbone outputs that nothing reads. Each raises ``SystemExit`` saying what is
wrong and what to do (the last one only warns outside DDP)."""
from __future__ import annotations

import os.path as osp
from typing import Any, Callable, Iterable

import torch


def _dataset_paths(dataset: Any) -> list[tuple[str, str]]:
    """(description, path) pairs a dataset config needs on disk; follows wrappers (RepeatDataset, ...)."""
    if dataset is None:
        return []
    if 'datasets' in dataset:
        return [p for d in dataset['datasets'] for p in _dataset_paths(d)]
    if 'dataset' in dataset:
        return _dataset_paths(dataset['dataset'])
    root = dataset.get('data_root') or ''
    paths = []
    if dataset.get('ann_file'):
        paths.append(('annotation file', osp.join(root, dataset['ann_file'])))
    for key, sub in (dataset.get('data_prefix') or {}).items():
        if sub and isinstance(sub, str):
            paths.append((f'{key} folder', osp.join(root, sub)))
    if not paths and root:
        paths.append(('data root', root))
    return paths


def check_data(cfg: Any, loaders: Iterable[str]) -> None:
    """Stop with a clear message when a dataset the run needs is not on disk."""
    for loader in loaders:
        dataset = (cfg.get(loader) or {}).get('dataset')
        for what, path in _dataset_paths(dataset):
            if '://' in path or osp.exists(path):
                continue
            raise SystemExit(
                f'{loader}: the {what} {path!r} does not exist.\n'
                f'Put the dataset there (COCO 2017: data/coco/{{annotations,train2017,val2017}}; ADE20K: '
                f'data/ade/ADEChallengeData2016/{{images,annotations}}/{{training,validation}}; see '
                f'docs/get_started.md, "Datasets"), symlink it into data/, or point the config elsewhere with '
                f'--cfg-options {loader}.dataset.data_root=<dir>. For a quick check on the embedded synthetic '
                f'data, see docs/get_started.md.')


def check_pretrained(cfg: Any) -> None:
    """Stop with a clear message when the backbone's Pretrained checkpoint is a local file that is missing."""
    backbone = (cfg.get('model') or {}).get('backbone') or {}
    init_cfg = backbone.get('init_cfg')
    if not isinstance(init_cfg, dict) or init_cfg.get('type') != 'Pretrained':
        return
    ckpt = str(init_cfg.get('checkpoint', ''))
    if '://' in ckpt or osp.exists(ckpt):
        return
    raise SystemExit(
        f'model.backbone.init_cfg: the pretrained checkpoint {ckpt!r} does not exist.\n'
        f'Convert the authors\' ImageNet weights with tools/model_converters/official2mmsparse.py FAMILY SRC {ckpt} '
        f'(see docs/get_started.md, "Pretrained weights"), or train from scratch with '
        f'--cfg-options model.backbone.init_cfg=None.')


def _torchvision_uses(node: Any, path: str) -> list[tuple[str, str]]:
    """(dotted path, value) of every ``torchvision://`` string in a config subtree."""
    if isinstance(node, str):
        return [(path, node)] if node.startswith('torchvision://') else []
    if isinstance(node, dict):
        return [u for k, v in node.items() for u in _torchvision_uses(v, f'{path}.{k}' if path else str(k))]
    if isinstance(node, (list, tuple)):
        return [u for i, v in enumerate(node) for u in _torchvision_uses(v, f'{path}[{i}]')]
    return []


def check_torchvision(cfg: Any, importer: Callable[[str], Any] | None = None) -> None:
    """Stop with a clear message when the config loads a ``torchvision://`` checkpoint and torchvision cannot be
    imported (mmengine resolves that scheme through it).

    Args:
        importer: replaces ``importlib.import_module`` (for tests).
    """
    uses = _torchvision_uses(cfg.to_dict() if hasattr(cfg, 'to_dict') else dict(cfg), '')
    if not uses:
        return
    import importlib
    try:
        (importer or importlib.import_module)('torchvision')
        return
    except Exception as err:  # ImportError, or a torchvision built for another torch failing at import
        reason = f'{type(err).__name__}: {err}'
    where = '; '.join(f'{path} = {value!r}' for path, value in uses)
    path, value = uses[0]
    url = _torchvision_url(value[len('torchvision://'):])
    local = f' (the file torchvision://{value[len("torchvision://"):]} stands for: {url})' if url else ''
    raise SystemExit(
        f'This config loads torchvision:// checkpoints ({where}); that scheme needs torchvision, which cannot '
        f'be imported ({reason}).\nEither install the torchvision release built for your torch '
        f'({torch.__version__}): pip install torchvision==<the matching version>, or switch the entry to a '
        f'checkpoint that needs no torchvision: a local file{local}, e.g. --cfg-options '
        f'{path}=checkpoints/resnet50.pth, or an open-mmlab:// checkpoint of the same architecture, e.g. '
        f'--cfg-options {path}=open-mmlab://... (see mmengine/hub/openmmlab.json).')


def _torchvision_url(name: str) -> str | None:
    """The download URL mmengine maps ``torchvision://name`` to (its own table; no torchvision needed)."""
    import json

    import mmengine
    table = osp.join(osp.dirname(mmengine.__file__), 'hub', 'torchvision_0.12.json')
    try:
        with open(table) as f:
            return json.load(f).get(name)
    except OSError:
        return None


# Why a config check run by tools/train.py: the model is built by mmdet / mmseg, and a backbone never sees the
# neck or heads that read its outputs, so only the whole model config can tell which outputs go unused. Under
# DDP without find_unused_parameters such a run stops at its second iteration ("Expected to have finished
# reduction in the prior iteration"): the error here comes first and names the fix. In one process an unused
# output only costs compute, so it gets a warning. mmdet's / mmseg's own tools do not run this check
# (docs/faq.md describes the crash and the fix).
def _model_class(type_: Any, task: str) -> type | None:
    """The class a config ``type`` builds in ``task``'s model registry (an mmsparse name from any scope)."""
    import importlib
    if isinstance(type_, type):
        return type_
    if not isinstance(type_, str):
        return None
    try:
        return importlib.import_module(f'{task}.registry').MODELS.get(type_)
    except (ImportError, KeyError):
        return None


_MISSING = object()


def _default(cls: type, name: str) -> Any:
    """The default of ``cls``'s ``__init__`` argument ``name`` (searching its bases), or ``_MISSING``."""
    import inspect
    for klass in cls.__mro__:
        init = vars(klass).get('__init__')
        param = inspect.signature(init).parameters.get(name) if init is not None else None
        if param is not None and param.default is not inspect.Parameter.empty:
            return param.default
    return _MISSING


def _first_neck(model: Any) -> Any:
    """The neck that reads the backbone (the first of mmdet's sequential necks), or None."""
    neck = model.get('neck')
    if isinstance(neck, (list, tuple)):
        neck = neck[0] if neck else None
    return neck or None


def _used_outputs(model: Any, num_outputs: int, task: str) -> tuple[list[int], str] | None:
    """Positions (0-based, in the backbone's output tuple) that the neck, or without a neck the heads, read, and
    the setting that decides it; None when the reader is not a known kind (an FPN-like neck, mmseg heads)."""
    neck = _first_neck(model)
    if neck:
        cls = _model_class(neck.get('type'), task)
        if cls is None or _default(cls, 'start_level') is _MISSING:
            return None
        start = neck.get('start_level', _default(cls, 'start_level'))
        end = neck.get('end_level', _default(cls, 'end_level'))
        end = num_outputs if end in (-1, num_outputs - 1) else end + 1
        return list(range(start, min(end, num_outputs))), f'model.neck (start_level={start}, end_level={end - 1})'
    heads = [h for key in ('decode_head', 'auxiliary_head')
             for h in (model.get(key) if isinstance(model.get(key), (list, tuple)) else [model.get(key)]) if h]
    if task != 'mmseg' or not heads:
        return None
    used: set[int] = set()
    for head in heads:
        index = head.get('in_index', -1)
        used.update(i % num_outputs for i in (index if isinstance(index, (list, tuple)) else [index]))
    return sorted(used), "the heads' in_index"


def check_backbone_outputs(cfg: Any, distributed: bool) -> None:
    """Warn, or under DDP stop, when an mmsparse backbone returns an output that the neck / heads never read.

    Such an output's norm (and with a neck that ends early, the stages after the last one read) gets no
    gradient. ``distributed`` without ``find_unused_parameters``: ``SystemExit``; otherwise a warning. Neck types
    without ``start_level`` / ``end_level`` (and models without neck or mmseg heads) are not judged.
    """
    import warnings

    from mmsparse.models.backbones.base import SparseBackbone, check_out_indices
    from .inference import task_of
    model = cfg.get('model') or {}
    backbone = model.get('backbone') or {}
    task = task_of(cfg)
    cls = _model_class(backbone.get('type'), task)
    if cls is None or not issubclass(cls, SparseBackbone):
        return
    indices = check_out_indices(backbone.get('out_indices', _default(cls, 'out_indices')), cls.num_stages)
    found = _used_outputs(model, len(indices), task)
    if found is None:
        return
    used, reader = found
    neck = _first_neck(model) or {}
    channels = neck.get('in_channels')
    if reader.startswith('model.neck') and isinstance(channels, (list, tuple)) and len(channels) != len(indices):
        raise SystemExit(f'model.neck.in_channels has {len(channels)} entries ({list(channels)}) for the '
                         f'{len(indices)} outputs of model.backbone (out_indices={indices}); give one channel '
                         f'count per returned stage')
    unused = [i for i in range(len(indices)) if i not in used]
    if not unused or not used:
        return
    norms = backbone.get('out_norm_cfg', _default(cls, 'out_norm_cfg')) is not None
    # parameters without a gradient: the unused outputs' norms, and the stages after the last output read
    last_read = indices[used[-1]]
    idle = [f'norm{indices[i]}' for i in unused if norms]
    idle += [f'stages.{s}' for s in range(last_read + 1, indices[-1] + 1)]
    fix = f'model.backbone.out_indices={tuple(indices[i] for i in used)}'
    if reader.startswith('model.neck') and channels:
        fix += f' with model.neck.in_channels={[channels[i] for i in used]} and model.neck.start_level=0'
        if neck.get('end_level', -1) != -1:
            fix += ', end_level=-1'
    elif not reader.startswith('model.neck'):
        fix += f' with the heads\' in_index counting the returned stages (0: stage {indices[used[0]]})'
    message = (f'model.backbone ({cls.__name__}, out_indices={indices}) returns the output of stages '
               f'{[indices[i] for i in unused]}, which {reader} never reads. Return only the stages read: {fix} '
               f'(or make the reader use every output)')
    wrapper = cfg.get('model_wrapper_cfg') or {}
    tolerant = cfg.get('find_unused_parameters') or wrapper.get('find_unused_parameters')
    if not idle:  # no output norms: the unused maps cost nothing beyond the stages the others need
        warnings.warn(f'{message}.', stacklevel=2)
        return
    message += f'. Their parameters ({", ".join(idle)}) get no gradient'
    if distributed and not tolerant:
        raise SystemExit(f'{message}, and DDP stops at the second iteration ("Expected to have finished reduction '
                         f'in the prior iteration").')
    warnings.warn(f'{message} (under DDP without find_unused_parameters, the run would stop at its second '
                  f'iteration).', stacklevel=2)
