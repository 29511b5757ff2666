"""End to end through the command-line tools: train -> checkpoint -> test, resume, 2-process DDP on CPU,
clear errors for missing data, and the torch>=2.6 checkpoint-loading policy."""
import io
import os

import pickle
import subprocess
import sys

import pytest
import torch

from tests.conftest import REPO, SYNTHETIC_COCO_OPTIONS, ensure_synthetic_data

DET_DEMO = 'configs/demo/maskrcnn_demo_synthetic.py'
SEG_DEMO = 'configs/demo/upernet_demo_synthetic.py'
# a few iterations, evaluation on 4 images: the tools' plumbing, not the accuracy, is under test here
QUICK = ['val_dataloader.dataset.indices=4', 'test_dataloader.dataset.indices=4']


def run_tool(*args, env=None, timeout=900):
    full_env = dict(os.environ, PYTHONPATH=REPO, **(env or {}))
    proc = subprocess.run([sys.executable, *args], cwd=REPO, env=full_env, capture_output=True, text=True,
                          timeout=timeout)
    return proc


def ok(proc):
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    return proc


@pytest.fixture(scope='module', autouse=True)
def synthetic_data():
    ensure_synthetic_data()  # the demo configs' own, larger sets too


@pytest.mark.slow
def test_det_train_checkpoint_then_test(tmp_path):
    work = tmp_path / 'work'
    ok(run_tool('tools/train.py', DET_DEMO, '--work-dir', str(work), '--cfg-options', 'train_cfg.max_iters=3',
                'train_cfg.val_interval=100', 'default_hooks.checkpoint.interval=3', *QUICK))
    ckpt = work / 'iter_3.pth'
    assert ckpt.is_file()
    out = tmp_path / 'results.pkl'
    proc = ok(run_tool('tools/test.py', DET_DEMO, str(ckpt), '--work-dir', str(tmp_path / 'test'), '--out',
                       str(out), '--cfg-options', *QUICK))
    assert 'coco/bbox_mAP' in proc.stdout and 'coco/segm_mAP' in proc.stdout
    with open(out, 'rb') as f:
        results = pickle.load(f)
    assert len(results) == 4 and 'pred_instances' in results[0]


@pytest.mark.slow
def test_seg_train_checkpoint_then_test(tmp_path):
    work = tmp_path / 'work'
    ok(run_tool('tools/train.py', SEG_DEMO, '--work-dir', str(work), '--cfg-options', 'train_cfg.max_iters=2',
                'train_cfg.val_interval=100', 'default_hooks.checkpoint.interval=2', *QUICK))
    proc = ok(run_tool('tools/test.py', SEG_DEMO, str(work / 'iter_2.pth'), '--work-dir', str(tmp_path / 't'),
                       '--show-dir', str(tmp_path / 'vis'), '--cfg-options', *QUICK))
    assert 'mIoU' in proc.stdout
    assert any(f.endswith('.png') for _, _, fs in os.walk(tmp_path / 'vis') for f in fs)


@pytest.mark.slow
def test_resume_continues_from_last_checkpoint(tmp_path):
    work = tmp_path / 'work'
    common = ['--work-dir', str(work), '--cfg-options', 'train_cfg.val_interval=100',
              'default_hooks.checkpoint.interval=2', 'default_hooks.logger.interval=1', *QUICK]
    ok(run_tool('tools/train.py', DET_DEMO, *common, 'train_cfg.max_iters=2'))  # "interrupted" after 2 iters
    first = torch.load(work / 'iter_2.pth', map_location='cpu')
    proc = ok(run_tool('tools/train.py', DET_DEMO, '--resume', *common, 'train_cfg.max_iters=4'))
    log = proc.stdout + proc.stderr
    assert 'resumed epoch: 0, iter: 2' in log
    assert 'Iter(train) [1/4]' not in log and 'Iter(train) [3/4]' in log
    second = torch.load(work / 'iter_4.pth', map_location='cpu')
    assert second['meta']['iter'] == 4 and first['meta']['iter'] == 2
    # the optimizer state travelled: AdamW's step counter continues from 2
    step = next(iter(second['optimizer']['state'].values()))['step']
    assert int(step) == 4


@pytest.mark.slow
def test_two_process_dist_train_on_cpu(tmp_path):
    work = tmp_path / 'work'
    import socket
    with socket.socket() as sock:  # a free port, so parallel or leftover runs do not collide
        sock.bind(('127.0.0.1', 0))
        port = sock.getsockname()[1]
    env = dict(os.environ, PYTHONPATH=REPO, PYTHON=sys.executable, PORT=str(port), OMP_NUM_THREADS='1')
    proc = subprocess.run(['bash', 'tools/dist_train.sh', DET_DEMO, '2', '--work-dir', str(work), '--cfg-options',
                           'train_cfg.max_iters=2', 'train_cfg.val_interval=100',
                           'default_hooks.checkpoint.interval=2', 'default_hooks.logger.interval=1', *QUICK],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    log = proc.stdout + proc.stderr
    assert "'backend': 'gloo'" in log
    assert 'Distributed training: True' in log and 'GPU number: 2' in log  # mmengine's name for world size
    assert (work / 'iter_2.pth').is_file()


# What a user types to run a real COCO config on the synthetic data (docs/get_started.md shows the same).
def test_real_coco_config_without_data_says_where_to_put_it(tmp_path):
    proc = run_tool('tools/train.py', 'configs/biformer/maskrcnn_biformer_s_coco.py', '--work-dir', str(tmp_path))
    assert proc.returncode != 0
    assert "the annotation file 'data/coco/annotations/instances_train2017.json' does not exist" in proc.stderr
    assert 'docs/get_started.md' in proc.stderr


def test_missing_pretrained_checkpoint_says_how_to_make_it(tmp_path):
    proc = run_tool('tools/train.py', 'configs/biformer/maskrcnn_biformer_s_coco.py', '--work-dir', str(tmp_path),
                    '--cfg-options', *SYNTHETIC_COCO_OPTIONS)
    assert proc.returncode != 0
    assert 'biformer_small_in1k_mmsparse.pth' in proc.stderr and 'official2mmsparse.py' in proc.stderr


@pytest.mark.slow
def test_real_coco_config_trains_on_synthetic_data_with_cfg_options(tmp_path):
    """`maskrcnn_biformer_s_coco.py` as users type it, pointed at the synthetic data with --cfg-options
    (smaller images and one iteration, to fit the CPU test budget)."""
    proc = ok(run_tool(
        'tools/train.py', 'configs/biformer/maskrcnn_biformer_s_coco.py', '--work-dir', str(tmp_path),
        '--cfg-options', *SYNTHETIC_COCO_OPTIONS, 'model.backbone.init_cfg=None',
        # 4 synthetic classes: an untrained 80-class head could predict labels the 4-class metric cannot map
        'model.roi_head.bbox_head.num_classes=4', 'model.roi_head.mask_head.num_classes=4',
        'train_dataloader.dataset.indices=2', 'val_dataloader.dataset.indices=1',
        'test_dataloader.dataset.indices=1', 'train_cfg.max_epochs=1', 'model.backbone.n_win=4',
        'train_dataloader.dataset.pipeline.2.scale=(256,192)', 'val_dataloader.dataset.pipeline.1.scale=(256,192)'))
    log = proc.stdout + proc.stderr
    assert 'Epoch(train) [1][1/1]' in log and 'Epoch(val) [1][1/1]' in log
    assert (tmp_path / 'epoch_1.pth').is_file()


def test_missing_dataset_says_where_to_put_it(tmp_path):
    proc = run_tool('tools/train.py', DET_DEMO, '--work-dir', str(tmp_path), '--cfg-options',
                    f'train_dataloader.dataset.data_root={tmp_path}/nowhere/')
    assert proc.returncode != 0
    assert 'does not exist' in proc.stderr and 'data/coco' in proc.stderr and '--cfg-options' in proc.stderr


def test_checkpoint_policy_allows_mmengine_objects_but_not_code():
    import numpy as np
    from mmengine.logging import HistoryBuffer

    import mmsparse  # noqa: F401  (installs the allowlist)
    buf = HistoryBuffer()
    buf.update(1.5)
    good = io.BytesIO()
    torch.save({'hub': buf, 'arr': np.arange(3), 'scalar': np.float64(2.0)}, good)
    good.seek(0)
    loaded = torch.load(good, weights_only=True)
    assert loaded['hub'].mean() == 1.5 and loaded['arr'].tolist() == [0, 1, 2]

    class Evil:
        def __reduce__(self):
            return (os.system, ('echo pwned',))

    bad = io.BytesIO()
    torch.save({'x': Evil()}, bad)
    bad.seek(0)
    with pytest.raises(pickle.UnpicklingError):
        torch.load(bad, weights_only=True)

    # getattr is only resolved for HistoryBuffer statistics, nothing else
    from mmsparse.utils.checkpoint import _history_buffer_getattr
    assert _history_buffer_getattr(HistoryBuffer, 'mean') is HistoryBuffer._statistics_methods['mean']
    with pytest.raises(RuntimeError, match='refusing getattr'):
        _history_buffer_getattr(os, 'system')
