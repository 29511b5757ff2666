"""Checks that stop a run before it starts: datasets on disk, a local pretrained checkpoint, torchvision for
``torchvision://`` checkpoints. Each raises ``SystemExit`` saying what is missing and what to do."""
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
