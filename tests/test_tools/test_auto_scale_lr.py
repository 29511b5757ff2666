"""Fewer GPUs than the recipe: every config states the recipe's total batch as ``auto_scale_lr.base_batch_size``,
and with tools/train.py --auto-scale-lr (1 process, and 2 DDP processes) the learning rate that reaches the
optimizer is the one docs/reproduce.md lists."""
import glob
import os.path as osp
import re

import pytest
import torch
from mmengine.config import Config

from tests.conftest import REPO, ensure_synthetic_data
from tests.test_tools.test_distributed import SEG_OPTIONS, train

UPERNET = 'configs/cloformer/upernet_cloformer_xxs_ade20k.py'
CONFIGS = sorted(f for f in glob.glob(osp.join(REPO, 'configs/*/*.py')) if '/_base_/' not in f)


def recipe_batch(path):
    """The recipe's total batch from independent sources: the GPUs x images of a plugin config's name (mmdet /
    mmseg naming), the authors' recipes (COCO 1x and UPerNet 160k: 8 x 2, Semantic FPN 80k: 8 x 4), and the
    single-process batch of the demos."""
    name = osp.basename(path)
    match = re.search(r'_(\d+)xb(\d+)-', name)
    if match:
        return int(match.group(1)) * int(match.group(2))
    if '/demo/' in path:
        return Config.fromfile(path).train_dataloader.batch_size
    if name.startswith('semfpn'):
        return 32
    return 16  # COCO 1x (also mmdet's stock 1x for the plugin R50 detectors), UPerNet 160k


@pytest.mark.parametrize('path', CONFIGS, ids=[osp.relpath(f, REPO) for f in CONFIGS])
def test_every_config_states_the_recipe_batch(path):
    with open(path) as f:
        stated = re.findall(r'^auto_scale_lr = dict\(enable=False, base_batch_size=(\d+)\)$', f.read(), re.M)
    assert stated == [str(recipe_batch(path))], f'{path}: auto_scale_lr line {stated}'
    assert Config.fromfile(path).auto_scale_lr == dict(enable=False, base_batch_size=recipe_batch(path))


def documented_lr(recipe, gpus, images):
    """The learning rate docs/reproduce.md's "Fewer GPUs" table gives for ``gpus`` x ``images``."""
    with open(osp.join(REPO, 'docs/reproduce.md')) as f:
        for line in f:
            cells = [c.strip() for c in line.strip().strip('|').split('|')]
            if len(cells) == 5 and cells[0] == recipe and cells[3] == f'{gpus} × {images}':
                return float(cells[4].strip('`'))
    raise AssertionError(f'docs/reproduce.md has no "Fewer GPUs" row for {recipe}, {gpus} × {images}')


@pytest.mark.slow
@pytest.mark.parametrize('nproc', [1, 2])
def test_auto_scale_lr_reaches_the_optimizer(nproc, tmp_path):
    """UPerNet (lr 6e-5 for 16 images) on 1 or 2 processes x 2 images: every parameter group of the optimizer
    starts from the documented lr (schedulers store it as ``initial_lr``). Catches --auto-scale-lr being
    ignored, a wrong base_batch_size, and a world size left out of the batch."""
    ensure_synthetic_data()
    options = [o for o in SEG_OPTIONS if not o.startswith(('train_cfg.max_iters', 'default_hooks.checkpoint'))]
    options += ['train_dataloader.dataset.pipeline.3.crop_size=(64,64)', 'model.data_preprocessor.size=(64,64)']
    # argparse ends the --cfg-options list at the next flag
    log = train(UPERNET, tmp_path, *options, 'train_cfg.max_iters=1', 'default_hooks.checkpoint.interval=1',
                '--auto-scale-lr', nproc=nproc)
    assert f'the current batch size is {2 * nproc}' in log
    groups = torch.load(tmp_path / 'iter_1.pth', map_location='cpu', weights_only=False)['optimizer']['param_groups']
    expected = documented_lr('UPerNet 160k', nproc, 2)
    assert expected == pytest.approx(6e-5 * 2 * nproc / 16)
    assert groups and all(g['initial_lr'] == pytest.approx(expected, rel=1e-9) for g in groups), groups
