"""The demo segmentor learns: the demo UPerNet (reduced BiFormer, from scratch) overfits a handful of synthetic
ADE20K-format images through tools/train.py and tools/test.py, the segmentation counterpart of
tests/test_tools/test_demo.py's detector test.

Chance levels on these images (5 classes after reduce_zero_label, background ~80 % of the labelled pixels):
predicting background everywhere gives mIoU ~16 (one class of five at IoU ~0.8). The trained model must reach
MIN_MIOU (53.3 measured after 160 iterations, seed 0) and beat the same model randomly initialised, evaluated
the same way (4.0 measured), by MIN_GAIN points.
"""
import os.path as osp

import pytest

from tests.conftest import REPO
from tests.test_tools.test_demo import run_tool

SEG_DEMO = osp.join(REPO, 'configs/demo/upernet_demo_synthetic.py')
OVERFIT_ITERS = 160
NUM_IMAGES = 8
MIN_MIOU = 40.
MIN_GAIN = 20.


def load_demo():
    """What ``tools/demo.py`` runs."""
    from mmsparse.benchmark import demo
    return demo


@pytest.fixture(scope='module')
def few_images(tmp_path_factory):
    """An ADE20K-format synthetic set of NUM_IMAGES training images (its validation split is unused)."""
    from mmsparse.datasets import make_synthetic_ade20k
    root = str(tmp_path_factory.mktemp('few_images') / 'ADEChallengeData2016')
    make_synthetic_ade20k(root, seed=0, num_train=NUM_IMAGES, num_val=1)
    return root


def overfit_config(path, root):
    """The demo segmentor trained and evaluated on the same ``root`` training images."""
    on_train = dict(data_root=root, data_prefix=dict(img_path='images/training', seg_map_path='annotations/training'))
    path.write_text(f"""
_base_ = [{SEG_DEMO!r}]
train_dataloader = dict(dataset=dict({on_train!r}))
val_dataloader = dict(dataset=dict({on_train!r}))
test_dataloader = val_dataloader
""")
    return str(path)


@pytest.mark.slow
def test_demo_segmentor_overfits_a_few_images(few_images, tmp_path):
    from mmengine.config import Config
    demo = load_demo()
    config = overfit_config(tmp_path / 'overfit_seg.py', few_images)
    iters, options = demo.schedule_options(Config.fromfile(config), OVERFIT_ITERS)
    run_tool('tools/train.py', config, '--work-dir', str(tmp_path / 'train'), '--cfg-options', *options)
    run_tool('tools/test.py', config, str(tmp_path / 'train' / f'iter_{iters}.pth'), '--work-dir',
             str(tmp_path / 'test'))
    trained = demo.test_metrics(str(tmp_path / 'test'))['mIoU']
    from tests.test_tools.test_tta import random_checkpoint
    untrained_ckpt = random_checkpoint(config, tmp_path / 'untrained.pth', 'mmseg')
    run_tool('tools/test.py', config, untrained_ckpt, '--work-dir', str(tmp_path / 'test0'))
    untrained = demo.test_metrics(str(tmp_path / 'test0'))['mIoU']
    assert trained >= MIN_MIOU and trained >= untrained + MIN_GAIN, f'mIoU {trained} trained, {untrained} untrained'
    print(f'mIoU {trained} trained, {untrained} untrained')
