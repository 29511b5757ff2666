"""The demo learns: each backbone family's demo detector overfits a handful of synthetic images through
tools/train.py and tools/test.py, and a shortened tools/demo.py run writes its summary, loss curve and pictures.

Both are slow (minutes on a 2-core CPU); run them with ``pytest tests/test_tools/test_demo.py``.
"""
import json
import os
import os.path as osp
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import REPO

DET_DEMO = osp.join(REPO, 'configs/demo/maskrcnn_demo_synthetic.py')
OVERFIT_ITERS = 200
NUM_IMAGES = 8
# reduced backbones of the three families with their default output norms (LN2d for BiFormer and STViT, GroupNorm(1, C)
# for CloFormer): LN2d outputs with channels-last strides made mmcv's RoIAlign pool wrong values, and the detector
# learned nothing (configs/biformer/README.md, "Training from scratch")
BACKBONES = {
    'biformer': dict(type='mmsparse.BiFormer', arch=dict(embed_dims=[32, 64, 128, 256], depths=[1, 1, 2, 1],
                                                         head_dim=32),
                     n_win=4, topks=(1, 2, 4, -2), drop_path_rate=0.),
    'cloformer': dict(type='mmsparse.CloFormer',
                      arch=dict(embed_dims=[32, 64, 128, 256], depths=[1, 1, 2, 1], num_heads=[4, 4, 8, 16],
                                group_splits=[[3, 1], [2, 2], [4, 4], [4, 12]], kernel_sizes=[[3], [5], [7], [9]],
                                window_sizes=[8, 4, 2, 1], mlp_kernel_sizes=[5] * 4, mlp_ratios=[4] * 4)),
    'stvit': dict(type='mmsparse.STViT', arch=dict(embed_dims=[32, 64, 128, 256], depths=[1, 1, 2, 1],
                                                   num_heads=[1, 2, 4, 8])),
}


def load_demo():
    """What ``tools/demo.py`` runs."""
    from mmsparse.benchmark import demo
    return demo


def run_tool(*args, timeout=900):
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get('PYTHONPATH', ''))
    proc = subprocess.run([sys.executable, *args], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=timeout)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    return proc.stdout


@pytest.fixture(scope='module')
def few_images(tmp_path_factory):
    """A COCO-format synthetic set of NUM_IMAGES training images (its validation split is unused)."""
    from mmsparse.datasets import make_synthetic_coco
    root = str(tmp_path_factory.mktemp('few_images'))
    make_synthetic_coco(root, seed=0, num_train=NUM_IMAGES, num_val=1)
    return root


def overfit_config(path, root, backbone):
    """A config file: the demo detector with ``backbone``, trained and evaluated on the training images."""
    train_ann = osp.join(root, 'annotations', 'instances_train2017.json')
    on_train = dict(data_root=root, ann_file='annotations/instances_train2017.json',
                    data_prefix=dict(img='train2017/'))
    text = f"""
_base_ = [{DET_DEMO!r}]
model = dict(backbone=dict(_delete_=True, **{backbone!r}), neck=dict(in_channels={backbone['arch']['embed_dims']!r}))
train_dataloader = dict(dataset=dict(data_root={root!r}))
val_dataloader = dict(dataset=dict({on_train!r}))
test_dataloader = val_dataloader
val_evaluator = dict(ann_file={train_ann!r})
test_evaluator = val_evaluator
"""
    with open(path, 'w') as f:
        f.write(text)
    return str(path)


@pytest.mark.slow
@pytest.mark.parametrize('family', sorted(BACKBONES))
def test_demo_detector_overfits_a_few_images(family, few_images, tmp_path):
    """Catches the RoIAlign fault: LN2d outputs with channels-last strides left bbox mAP near 0.00."""
    demo = load_demo()
    config = overfit_config(tmp_path / f'overfit_{family}.py', few_images, BACKBONES[family])
    from mmengine.config import Config
    iters, options = demo.schedule_options(Config.fromfile(config), OVERFIT_ITERS)
    run_tool('tools/train.py', config, '--work-dir', str(tmp_path / 'train'), '--cfg-options', *options)
    checkpoint = str(tmp_path / 'train' / f'iter_{iters}.pth')
    run_tool('tools/test.py', config, checkpoint, '--work-dir', str(tmp_path / 'test'))
    metrics = demo.test_metrics(str(tmp_path / 'test'))
    assert metrics['coco/bbox_mAP'] >= 0.5, f'{family}: {metrics}'


def test_schedule_options_stretch_the_schedulers_that_end_with_training():
    from mmengine.config import Config
    demo = load_demo()
    cfg = Config.fromfile(DET_DEMO)
    max_iters = cfg.train_cfg.max_iters
    iters, options = demo.schedule_options(cfg, 7)
    assert iters == 7
    assert 'train_cfg.max_iters=7' in options and 'default_hooks.checkpoint.interval=7' in options
    stretched = {opt.split('=')[0] for opt in options if opt.startswith('param_scheduler.')}
    expected = {f'param_scheduler.{i}.{key}' for i, s in enumerate(cfg.param_scheduler)
                for key in ('end', 'T_max') if s.get(key) == max_iters}
    assert stretched == expected and expected  # the warm-up (ending earlier) is left alone
    assert demo.schedule_options(cfg, None)[0] == max_iters


def read_png(path):
    import mmcv
    assert osp.isfile(path), f'{path} was not written'
    image = mmcv.imread(path)
    assert image is not None and image.ndim == 3 and min(image.shape[:2]) >= 100, f'{path}: {image.shape}'
    assert image.std() > 5, f'{path} is a blank picture'
    return image


@pytest.mark.slow
def test_short_demo_writes_summary_loss_curve_and_pictures(tmp_path):
    """The summary's header names both columns and its mIoU row holds tools/test.py's untrained and trained
    results in that order.

    Catches: a header without its "trained" column (``{"trained":>10}`` dropped from tools/demo.py), which the
    old ``'untrained' in out and 'trained' in out`` passed: the first word contains the second."""
    work = tmp_path / 'demo'
    out = run_tool('tools/demo.py', '--iters', '3', '--work-dir', str(work), '--num-images', '2', timeout=1200)
    header = next((ln.split() for ln in out.splitlines() if ln.startswith('task ')), None)
    assert header == ['task', 'metric', 'untrained', 'trained'], f'summary header: {header}\n{out[-3000:]}'
    for metric in ('coco/bbox_mAP', 'coco/segm_mAP', 'mIoU'):
        line = next((ln for ln in out.splitlines() if metric + ' ' in ln), None)
        assert line is not None, f'summary has no {metric} row:\n{out[-3000:]}'
        before, after = (float(v) for v in line.split()[-2:])
        assert 0 <= before <= 100 and 0 <= after <= 100
    # the summary's numbers are the ones tools/test.py wrote
    demo = load_demo()
    untrained = demo.test_metrics(str(work / 'segmentation' / 'test_untrained'))
    trained = demo.test_metrics(str(work / 'segmentation' / 'test_trained'))
    row = next(ln for ln in out.splitlines() if 'mIoU ' in ln).split()
    assert row[-2:] == [f"{untrained['mIoU']:.2f}", f"{trained['mIoU']:.2f}"]  # in the header's column order

    loss_png = str(work / 'training_loss.png')
    assert loss_png in out
    read_png(loss_png)
    for task in ('detection', 'segmentation'):
        path = str(work / f'{task}_predictions.png')
        assert path in out
        grid = read_png(path)
        singles = sorted((work / f'{task}_predictions').glob('*.png'))
        assert len(singles) == 2, singles  # --num-images 2
        single = read_png(str(singles[0]))
        assert grid.shape[0] >= 2 * single.shape[0] and grid.shape[1] == single.shape[1]
        source = next(Path(REPO, 'data').glob(f'demo_*/**/{singles[0].stem}.jpg'))
        assert single.shape[1] == 2 * read_png(str(source)).shape[1]  # ground truth | prediction
    for task in ('detection', 'segmentation'):
        with open(next((work / task / 'train').glob('*/vis_data/scalars.json'))) as f:
            losses = [json.loads(line)['loss'] for line in f if '"loss"' in line]
        assert len(losses) == 3 and np.isfinite(losses).all()
