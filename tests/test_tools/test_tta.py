"""Test-time augmentation through tools/test.py --tta (and tools/dist_test.sh): the configs' TTA views, a TTA
result that differs from the single-scale one on the synthetic data, the same TTA result from 2 DDP processes,
and a clear error where a config has no TTA."""
import os
import pickle
import subprocess
import sys

import mmcv
import numpy as np
import pytest
import torch
from mmengine.config import Config

from tests.conftest import REPO, ensure_synthetic_data
from tests.test_tools.test_distributed import launch

SEG_DEMO = f'{REPO}/configs/demo/upernet_demo_synthetic.py'
# a RetinaNet with the demo's reduced BiFormer on the synthetic box-only set (whose tta_pipeline is tested)
DET_TINY = f"""
_base_ = ['{REPO}/configs/_base_/models/retinanet_fpn.py', '{REPO}/configs/_base_/datasets/synthetic_coco_detection.py',
          '{REPO}/configs/_base_/default_runtime_det.py']
model = dict(backbone=dict(_delete_=True, type='mmsparse.BiFormer',
                           arch=dict(embed_dims=[32, 64, 128, 256], depths=[1, 1, 2, 1], head_dim=32),
                           n_win=4, topks=(1, 2, 4, -2), out_norm_cfg=None, out_indices=(1, 2, 3)),
             neck=dict(in_channels=[64, 128, 256], out_channels=64),
             bbox_head=dict(num_classes=4, in_channels=64, feat_channels=64),
             test_cfg=dict(score_thr=0., max_per_img=20))  # untrained scores are ~0.01: report them anyway
test_dataloader = dict(dataset=dict(indices=3))
train_cfg = dict(type='EpochBasedTrainLoop', max_epochs=1)
test_cfg = dict(type='TestLoop')
val_cfg = dict(type='ValLoop')
optim_wrapper = dict(optimizer=dict(type='SGD', lr=0.01))
"""
QUICK_SEG = ['--cfg-options', 'test_dataloader.dataset.indices=4']


@pytest.fixture(scope='module', autouse=True)
def synthetic_data():
    ensure_synthetic_data()


def random_checkpoint(config, path, scope):
    """A checkpoint of the config's model with its seeded random initialisation (no training needed: the
    views of an untrained model disagree enough for TTA to change the predictions)."""
    from mmengine.registry import init_default_scope

    import mmsparse  # noqa: F401
    init_default_scope(scope)
    registry = __import__(f'{scope}.registry', fromlist=['MODELS']).MODELS
    torch.manual_seed(0)
    model = registry.build(Config.fromfile(config).model)
    model.init_weights()
    torch.save(dict(state_dict=model.state_dict(), meta=dict()), path)
    return str(path)


def run_test_tool(*args):
    env = dict(os.environ, PYTHONPATH=REPO, OMP_NUM_THREADS='1')
    proc = subprocess.run([sys.executable, 'tools/test.py', *map(str, args)], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=900)
    return proc


def ok(proc):
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-5000:]
    return proc.stdout


def predictions(folder):
    files = sorted(os.listdir(folder))
    assert len(files) == 4, files
    return {f: mmcv.imread(os.path.join(folder, f), flag='unchanged') for f in files}


def test_config_tta_views():
    """ADE20K: ratios 0.5-1.75 of the test scale (2048, 512), each plain and flipped; COCO: mmdet's scheme."""
    ade = Config.fromfile(f'{REPO}/configs/biformer/upernet_biformer_s_ade20k.py')
    assert ade.tta_model.type == 'SegTTAModel'
    resizes, flips = ade.tta_pipeline[1].transforms[:2]
    assert [r['scale'] for r in resizes] == [(int(2048 * r), int(512 * r)) for r in (.5, .75, 1., 1.25, 1.5, 1.75)]
    assert sorted(f['prob'] for f in flips) == [0., 1.]
    coco = Config.fromfile(f'{REPO}/configs/stvit/retinanet_stvit_s_coco.py')
    assert coco.tta_model.type == 'DetTTAModel'
    assert [r['scale'] for r in coco.tta_pipeline[1].transforms[0]] == [(1333, 800), (666, 400), (2000, 1200)]
    assert 'flip' in coco.tta_pipeline[1].transforms[3][0]['meta_keys']  # DetTTAModel un-flips the boxes


def test_tta_without_tta_config_says_why(tmp_path):
    checkpoint = tmp_path / 'any.pth'
    checkpoint.write_bytes(b'')
    proc = run_test_tool(f'{REPO}/configs/demo/maskrcnn_demo_synthetic.py', checkpoint, '--tta')
    assert proc.returncode != 0
    assert '--tta: the config defines no tta_model / tta_pipeline' in proc.stderr
    assert 'instance masks' in proc.stderr


@pytest.mark.slow
def test_seg_tta_differs_from_single_scale_and_runs_under_ddp(tmp_path):
    checkpoint = random_checkpoint(SEG_DEMO, tmp_path / 'seg.pth', 'mmseg')
    single = ok(run_test_tool(SEG_DEMO, checkpoint, '--work-dir', tmp_path / 'w1', '--out', tmp_path / 'single',
                              *QUICK_SEG))
    tta = ok(run_test_tool(SEG_DEMO, checkpoint, '--work-dir', tmp_path / 'w2', '--out', tmp_path / 'tta', '--tta',
                           *QUICK_SEG))
    assert 'mIoU' in single and 'mIoU' in tta
    one, many = predictions(tmp_path / 'single'), predictions(tmp_path / 'tta')
    changed = sum(int((one[f] != many[f]).sum()) for f in one)
    assert changed > 100, changed  # the 12 views' averaged softmax moves the argmax of many pixels

    proc = launch('dist_test.sh', SEG_DEMO, checkpoint, '2', '--work-dir', str(tmp_path / 'w3'), '--out',
                  str(tmp_path / 'ddp'), '--tta', *QUICK_SEG, timeout=600)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-5000:]
    assert 'mIoU' in proc.stdout
    ddp = predictions(tmp_path / 'ddp')
    assert all(np.array_equal(ddp[f], many[f]) for f in many)  # the same TTA, split over 2 processes


@pytest.mark.slow
def test_det_tta_differs_from_single_scale(tmp_path):
    config = tmp_path / 'retinanet_tiny.py'
    config.write_text(DET_TINY)
    checkpoint = random_checkpoint(str(config), tmp_path / 'det.pth', 'mmdet')
    results = {}
    for name, extra in (('single', []), ('tta', ['--tta'])):
        out = ok(run_test_tool(config, checkpoint, '--work-dir', tmp_path / name, '--out',
                               tmp_path / f'{name}.pkl', *extra))
        assert 'coco/bbox_mAP' in out
        with open(tmp_path / f'{name}.pkl', 'rb') as f:
            results[name] = pickle.load(f)
    assert len(results['single']) == len(results['tta']) == 3
    for single, tta in zip(results['single'], results['tta']):
        a, b = single['pred_instances']['bboxes'], tta['pred_instances']['bboxes']
        assert len(b) > 0 and (a.shape != b.shape or not torch.allclose(a, b))
