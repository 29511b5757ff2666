"""The task of a config, model configs without pretrained weights, and fake data samples for forward passes."""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
    from mmengine.structures import BaseDataElement

#: the downstream tasks (``default_scope`` values) the tools run
TASKS = ('mmdet', 'mmseg')


def task_of(cfg: Any, source: str | None = None) -> str:
    """The task of a config: its ``default_scope``, ``'mmdet'`` or ``'mmseg'``.

    Raises:
        ValueError: another scope (the message names ``source``, e.g. the config's path, when given).
    """
    scope = cfg.get('default_scope')
    if scope not in TASKS:
        where = f'{source}: ' if source else ''
        raise ValueError(f'{where}default_scope={scope!r} in the config; mmsparse tools run configs whose '
                         f'default_scope is one of {list(TASKS)}')
    return scope


def load_task_config(path: str, cfg_options: dict | None = None) -> tuple[Any, str]:
    """``(cfg, task)`` of the mmdet or mmseg config at ``path``, with ``cfg_options`` merged.

    Raises:
        FileNotFoundError: no such file.
        ValueError: a scope other than mmdet / mmseg (:func:`task_of`).
    """
    from .model import load_config  # model.py imports this module
    cfg = load_config(path, cfg_options)
    return cfg, task_of(cfg, source=path)


def _is_pretrained(init_cfg: Any) -> bool:
    return isinstance(init_cfg, dict) and init_cfg.get('type') == 'Pretrained'


def drop_pretrained(model_cfg: Any) -> None:
    """Remove every pretrained-weight setting of a model config, in place (random weights, nothing to download).

    Clears mmseg's ``pretrained`` and a ``Pretrained`` ``init_cfg`` of the model or its backbone: a dict one
    becomes ``None``, a list one loses its ``Pretrained`` entries (``None`` if none is left).
    """
    if model_cfg.get('pretrained'):
        model_cfg['pretrained'] = None
    for cfg in (model_cfg, model_cfg.get('backbone') or {}):
        init_cfg = cfg.get('init_cfg')
        if _is_pretrained(init_cfg):
            cfg['init_cfg'] = None
        elif isinstance(init_cfg, (list, tuple)):
            kept = [c for c in init_cfg if not _is_pretrained(c)]
            cfg['init_cfg'] = kept or None


def fake_data_sample(task: str, h: int, w: int, num_classes: int = 1, generator: torch.Generator | None = None,
                     with_gt: bool = True, num_instances: int = 5) -> BaseDataElement:
    """One data sample of an ``h x w`` image (no padding, scale 1) with random ground truth.

    Args:
        task: ``'mmdet'`` (``DetDataSample``: ``num_instances`` boxes with box-shaped masks, labels in
            ``[0, num_classes)``, an empty ``ignored_instances``) or ``'mmseg'`` (``SegDataSample`` with a
            random ``gt_sem_seg``); anything else raises ``ValueError``.
        generator: a CPU generator, for reproducible ground truth.
        with_gt: False gives the metainfo alone (what a tensor forward needs).
    """
    from mmengine.structures import InstanceData, PixelData
    if task not in TASKS:
        raise ValueError(f'task={task!r}; fake data samples exist for {list(TASKS)}')
    meta = dict(img_shape=(h, w), ori_shape=(h, w), pad_shape=(h, w))
    if task == 'mmseg':
        from mmseg.structures import SegDataSample
        sample = SegDataSample(metainfo=meta)
        if with_gt:
            sample.gt_sem_seg = PixelData(data=torch.randint(0, num_classes, (1, h, w), generator=generator))
        return sample
    from mmdet.structures import DetDataSample
    from mmdet.structures.mask import BitmapMasks
    sample = DetDataSample(metainfo=dict(meta, scale_factor=(1., 1.), batch_input_shape=(h, w)))
    if not with_gt:
        return sample
    xy = torch.rand(num_instances, 2, generator=generator) * torch.tensor([w * .6, h * .6])
    wh = (torch.rand(num_instances, 2, generator=generator) * .3 + .1) * torch.tensor([w, h])
    boxes = torch.cat([xy, xy + wh], 1)
    masks = torch.zeros(num_instances, h, w, dtype=torch.uint8)
    for i, (x0, y0, x1, y1) in enumerate(boxes.round().long().tolist()):
        masks[i, y0:y1, x0:x1] = 1
    sample.gt_instances = InstanceData(
        bboxes=boxes, labels=torch.randint(0, num_classes, (num_instances, ), generator=generator),
        masks=BitmapMasks(masks.numpy(), h, w))
    sample.ignored_instances = InstanceData(bboxes=torch.zeros(0, 4), labels=torch.zeros(0, dtype=torch.long))
    return sample
