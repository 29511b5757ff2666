"""Every config trains under DDP: one loss + backward of the model exactly as configured (pretrained weights
dropped, a 2x3x128x160 batch with synthetic targets) reaches every trainable parameter, unless the config sets
``find_unused_parameters=True``; then the parameters without a gradient must be exactly the config's
``unused_parameters`` list (so a new unused branch, or a list gone stale, fails here instead of in DDP)."""
import glob
import os.path as osp

import pytest
import torch
from mmengine.config import Config

from mmsparse.apis import drop_pretrained, fake_data_sample, revert_sync_bn_on_cpu, task_of
from tests.conftest import REPO

CONFIGS = sorted(p for p in glob.glob(osp.join(REPO, 'configs', '**', '*.py'), recursive=True)
                 if '_base_' not in p.split(osp.sep))
# the large variants take tens of seconds each on 2 CPU cores: still covered, in the slow lane
LARGE = ('_b_', '_l_', '_s_coco', 'rtmdet', 'r50')
H, W = 128, 160


def config_id(path):
    return osp.relpath(path, osp.join(REPO, 'configs'))


def params_without_grad(cfg):
    import mmsparse  # noqa: F401
    from mmengine.registry import init_default_scope
    task = task_of(cfg)
    init_default_scope(task)
    registry = __import__(f'{task}.registry', fromlist=['MODELS']).MODELS
    drop_pretrained(cfg.model)
    revert_sync_bn_on_cpu(cfg)
    torch.manual_seed(0)
    model = registry.build(cfg.model)
    model.init_weights()
    model.train()
    gen = torch.Generator().manual_seed(0)
    head = cfg.model.get('decode_head') or cfg.model.get('roi_head', {}).get('bbox_head') or cfg.model.get(
        'bbox_head') or {}
    num_classes = head.get('num_classes', 2)
    samples = [fake_data_sample(task, H, W, num_classes=num_classes, generator=gen) for _ in range(2)]
    if task == 'mmdet' and not cfg.model.get('roi_head', {}).get('mask_head'):
        for sample in samples:  # box-only heads (RTMDet's) do not accept instance masks
            del sample.gt_instances.masks
    inputs = torch.randn(2, 3, H, W, generator=gen)
    losses = model.loss(inputs, samples)
    total = sum(v.sum() for k, v in losses.items() if 'loss' in k and isinstance(v, torch.Tensor)) + sum(
        sum(x.sum() for x in v) for k, v in losses.items() if 'loss' in k and isinstance(v, (list, tuple)))
    total.backward()
    return {name for name, p in model.named_parameters() if p.requires_grad and p.grad is None}


def _params(large):
    return [pytest.param(p, id=config_id(p), marks=[pytest.mark.slow] if large else [])
            for p in CONFIGS if any(tag in config_id(p) for tag in LARGE) == large]


def check(path):
    cfg = Config.fromfile(path)
    unused = params_without_grad(cfg)
    if cfg.get('find_unused_parameters'):
        declared = cfg.get('unused_parameters')
        assert declared is not None, (f'{config_id(path)} sets find_unused_parameters=True: list the parameters '
                                      f'that get no gradient in unused_parameters; found {sorted(unused)}')
        assert unused == set(declared), f'unused {sorted(unused)} != unused_parameters {sorted(declared)}'
    else:
        assert not unused, (f'{config_id(path)}: these parameters get no gradient, so DDP fails at the second '
                            f'iteration: {sorted(unused)}')


@pytest.mark.parametrize('path', _params(False))
def test_config_reaches_every_parameter(path):
    check(path)


@pytest.mark.parametrize('path', _params(True))
def test_large_config_reaches_every_parameter(path):
    check(path)


def test_every_config_is_covered():
    assert len(_params(False)) + len(_params(True)) == len(CONFIGS) >= 40


def test_the_check_catches_an_unused_output_norm():
    """The failure of issue 11: RetinaNet's FPN from level 1 on a backbone that still outputs stage 0."""
    cfg = Config.fromfile(osp.join(REPO, 'configs/cloformer/retinanet_cloformer_xxs_coco.py'))
    cfg.model.backbone.out_indices = (0, 1, 2, 3)
    cfg.model.neck.in_channels = [cfg.model.neck.in_channels[0] // 2] + list(cfg.model.neck.in_channels)
    cfg.model.neck.start_level = 1
    cfg.model.neck.add_extra_convs = 'on_input'
    unused = params_without_grad(cfg)
    assert unused and all(name.startswith('backbone.norm0') for name in unused), unused
