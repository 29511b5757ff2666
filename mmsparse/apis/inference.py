"""The task of a config, model configs without pretrained weights, and fake data samples for forward passes."""

import torch

#: the downstream tasks (``default_scope`` values) the tools run
TASKS = ('mmdet', 'mmseg')


def task_of(cfg, source=None):
    """The downstream task of a config, from its ``default_scope`` ('mmdet' or 'mmseg').

    Raises ``ValueError`` naming the scope (and ``source``, e.g. the config's path, when given) otherwise.
    """
    scope = cfg.get('default_scope')
    if scope not in TASKS:
        where = f'{source}: ' if source else ''
        raise ValueError(f'{where}default_scope={scope!r} in the config; mmsparse tools run configs whose '
                         f'default_scope is one of {list(TASKS)}')
    return scope


def load_task_config(path, cfg_options=None):
    """``(cfg, task)`` of the mmdet or mmseg config at ``path`` with ``cfg_options`` merged.

    Raises ``FileNotFoundError`` for a missing file and ``ValueError`` (:func:`task_of`) for another scope.
    """
    from .model import load_config  # model.py imports this module
    cfg = load_config(path, cfg_options)
    return cfg, task_of(cfg, source=path)


def _is_pretrained(init_cfg):
    return isinstance(init_cfg, dict) and init_cfg.get('type') == 'Pretrained'


def drop_pretrained(model_cfg):
    """Remove every pretrained-weight setting of a model config, in place: random weights, nothing to download.

    Clears mmseg's ``model.pretrained`` and a ``Pretrained`` ``init_cfg`` of the model or of its backbone, in
    dict form (set to ``None``) or list form (the ``Pretrained`` entries are removed, the others stay). Used
    where the weights cannot matter: smoke runs, FLOP counts, speed and memory benchmarks.
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


def fake_data_sample(task, h, w, num_classes=1, generator=None, with_gt=True, num_instances=5):
    """One mmdet / mmseg data sample of an ``h x w`` image (no padding, scale 1) with random ground truth.

    ``task`` is ``'mmdet'`` (``DetDataSample``: ``num_instances`` boxes with box-shaped masks and labels in
    ``[0, num_classes)``, and an empty ``ignored_instances``) or ``'mmseg'`` (``SegDataSample`` with a random
    ``gt_sem_seg`` class map). ``with_gt=False`` gives the metainfo alone (what a tensor forward needs).
    ``generator`` (a CPU ``torch.Generator``) makes the ground truth reproducible.
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
