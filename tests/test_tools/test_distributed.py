"""2-process DDP on CPU through the launchers, as a user runs them: clean exits run after run, DDP equal to a
single process on the same global batch, and real family configs (SyncBN ones included) training under DDP."""
import os
import socket
import subprocess
import sys

import pytest
import torch

from mmsparse.apis import revert_sync_bn_on_cpu, run_tool
from tests.conftest import REPO, SYNTHETIC_COCO_OPTIONS, ensure_synthetic_data

SEG_DEMO = 'configs/demo/upernet_demo_synthetic.py'
SYNTHETIC_ADE = 'data/synthetic_ade20k/ADEChallengeData2016'


@pytest.fixture(scope='module', autouse=True)
def synthetic_data():
    ensure_synthetic_data()


def free_port():
    with socket.socket() as sock:
        sock.bind(('127.0.0.1', 0))
        return sock.getsockname()[1]


def launch(script, *args, nproc=2, timeout=900):
    """``bash tools/<script> ...`` with NUM_PROCS=nproc on a free port; returns the CompletedProcess."""
    env = dict(os.environ, PYTHONPATH=REPO, PYTHON=sys.executable, PORT=str(free_port()), OMP_NUM_THREADS='1')
    return subprocess.run(['bash', f'tools/{script}', *args], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=timeout)


def train(config, work, *options, nproc=2):
    if nproc == 1:
        env = dict(os.environ, PYTHONPATH=REPO, OMP_NUM_THREADS='1')
        proc = subprocess.run([sys.executable, 'tools/train.py', config, '--work-dir', str(work), '--cfg-options',
                               *options], cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    else:
        proc = launch('dist_train.sh', config, str(nproc), '--work-dir', str(work), '--cfg-options', *options)
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-6000:]
    return log


@pytest.mark.slow
def test_dist_train_and_dist_test_exit_cleanly_run_after_run(tmp_path):
    options = ['train_cfg.max_iters=1', 'train_cfg.val_interval=1000', 'default_hooks.checkpoint.interval=1',
               'model.data_preprocessor.size=(64,64)', 'train_dataloader.dataset.pipeline.3.crop_size=(64,64)',
               'train_dataloader.batch_size=2', 'test_dataloader.dataset.indices=2']  # BN after 1x1 pooling: 2 a rank
    for attempt in range(3):  # issue 11: rank 0 aborted after training in one run out of three
        log = train(SEG_DEMO, tmp_path / f'run{attempt}', *options)
        assert 'terminate called' not in log and 'training finished' in log
    # the checkpoint of a 2-process run carries both ranks' RNG states (ExactResumeHook gathers them)
    states = torch.load(tmp_path / 'run0' / 'iter_1.pth', map_location='cpu', weights_only=False)['rng_states']
    assert len(states) == 2 and all(set(s) >= {'torch', 'numpy', 'python'} for s in states)
    proc = launch('dist_test.sh', SEG_DEMO, str(tmp_path / 'run0' / 'iter_1.pth'), '2', '--work-dir',
                  str(tmp_path / 'test'), '--cfg-options', 'test_dataloader.dataset.indices=2')
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-6000:]
    assert 'mIoU' in proc.stdout


# The demo UPerNet made independent of how the batch is split: frozen BN statistics in the backbone
# (norm_eval), GN in the heads, no dropout, a pipeline without random transforms, SGD (AdamW divides by the
# gradient's own magnitude, which turns rounding-level differences of near-zero gradients into full steps).
SPLIT_INDEPENDENT = f"""
_base_ = '{REPO}/configs/demo/upernet_demo_synthetic.py'
gn = dict(type='GN', num_groups=8, requires_grad=True)
model = dict(backbone=dict(norm_eval=True),
             decode_head=dict(norm_cfg=gn, dropout_ratio=0.),
             auxiliary_head=dict(norm_cfg=gn, dropout_ratio=0.))
train_dataloader = dict(dataset=dict(pipeline=[
    dict(type='LoadImageFromFile'), dict(type='LoadAnnotations', reduce_zero_label=True),
    dict(type='Resize', scale=(128, 128), keep_ratio=False), dict(type='PackSegInputs')]))
optim_wrapper = dict(_delete_=True, type='OptimWrapper', optimizer=dict(type='SGD', lr=0.01, momentum=0.9))
param_scheduler = []
randomness = dict(seed=0)
"""


def trainable_parameters(config):
    """Names of the parameters the optimizer updates in ``config``'s model (``requires_grad``), built here."""
    from mmengine.config import Config
    from mmengine.registry import init_default_scope
    from mmseg.registry import MODELS
    cfg = Config.fromfile(str(config))
    init_default_scope(cfg.default_scope)
    return {name for name, p in MODELS.build(cfg.model).named_parameters() if p.requires_grad}


@pytest.mark.slow
def test_ddp_two_by_one_equals_one_by_two(tmp_path):
    """Two processes with one image each end where one process with both images ends: the trained parameters
    agree after each of two steps, and so does the second step itself, to 1 % of its size. Only the parameters
    the optimizer updates are compared, and every one of them must have moved in the second step (SGD with
    momentum moves every parameter that had a gradient).

    Catches: runs that do not train (``cfg.optim_wrapper.optimizer.lr = 0.`` in tools/train.py): both keep the
    same seeded initial weights, which the old check, counting every float tensor as moved, passed."""
    config = tmp_path / 'split_independent.py'
    config.write_text(SPLIT_INDEPENDENT)
    common = ['train_cfg.max_iters=2', 'train_cfg.val_interval=1000', 'default_hooks.checkpoint.interval=1',
              'default_hooks.checkpoint.max_keep_ckpts=-1']
    train(str(config), tmp_path / 'single', *common, 'train_dataloader.batch_size=2', nproc=1)
    log = train(str(config), tmp_path / 'ddp', *common, 'train_dataloader.batch_size=1', nproc=2)
    assert 'Distributed training: True' in log

    def load(run, it):
        return torch.load(tmp_path / run / f'iter_{it}.pth', map_location='cpu', weights_only=False)['state_dict']

    single, ddp = [load('single', 1), load('single', 2)], [load('ddp', 1), load('ddp', 2)]
    trainable = trainable_parameters(config)
    assert trainable and trainable <= set(single[1]) and single[1].keys() == ddp[1].keys()
    moved = {k for k in trainable if not torch.equal(single[0][k], single[1][k])}
    assert moved == trainable, sorted(trainable - moved)[:20]
    for key in sorted(trainable):
        for it in (0, 1):
            scale = single[it][key].abs().max().item()
            assert (ddp[it][key] - single[it][key]).abs().max().item() <= 1e-5 * max(scale, 1e-3), (key, it)
        step_single, step_ddp = single[1][key] - single[0][key], ddp[1][key] - ddp[0][key]
        size = step_single.abs().max().item()
        assert (step_ddp - step_single).abs().max().item() <= 1e-2 * size + 1e-7, key


def det_options(scale):
    return [*SYNTHETIC_COCO_OPTIONS, 'model.backbone.init_cfg=None', 'train_dataloader.batch_size=1',
            'train_dataloader.num_workers=0', 'train_dataloader.persistent_workers=False',
            'train_dataloader.dataset.indices=4', 'val_dataloader.dataset.indices=1', 'train_cfg.max_epochs=1',
            'train_cfg.val_interval=100', f'train_dataloader.dataset.pipeline.2.scale={scale}']


SEG_OPTIONS = [
    f'{loader}.dataset.data_root={SYNTHETIC_ADE}' for loader in ('train_dataloader', 'val_dataloader')
] + ['model.backbone.init_cfg=None', 'train_dataloader.batch_size=2', 'train_dataloader.num_workers=0',
     'train_dataloader.persistent_workers=False', 'train_dataloader.dataset.pipeline.2.scale=(160,160)',
     'train_dataloader.dataset.pipeline.3.crop_size=(128,128)', 'model.data_preprocessor.size=(128,128)',
     'train_cfg.max_iters=2', 'train_cfg.val_interval=1000', 'default_hooks.checkpoint.interval=1000',
     'default_hooks.logger.interval=1']

FAMILY_RUNS = {
    'configs/stvit/retinanet_stvit_s_coco.py': det_options('(256,192)'),
    'configs/cloformer/maskrcnn_cloformer_xxs_coco.py': det_options('(256,192)'),
    'configs/cloformer/upernet_cloformer_xxs_ade20k.py': SEG_OPTIONS,
}


@pytest.mark.slow
@pytest.mark.parametrize('config', list(FAMILY_RUNS))
def test_family_config_trains_two_iterations_under_ddp(config, tmp_path):
    log = train(config, tmp_path, *FAMILY_RUNS[config])
    assert 'Distributed training: True' in log
    assert '[2/2]' in log  # the second iteration ran: the one where DDP checks for unused parameters
    if 'cloformer' in config:
        assert 'SyncBN has no CPU implementation' in log


def test_sync_bn_becomes_bn_for_cpu_ddp(capsys):
    from mmengine.config import Config
    cfg = Config.fromfile(f'{REPO}/configs/cloformer/upernet_cloformer_xxs_ade20k.py')
    assert revert_sync_bn_on_cpu(cfg) >= 2  # backbone and heads
    assert 'SyncBN' not in str(cfg.model)
    assert capsys.readouterr().out.count('\n') == 1  # a one-line notice


@pytest.mark.slow
def test_ddp_resume_restores_every_rank(tmp_path):
    """2 processes, checkpoint at 2 of 4 iterations, resumed in a fresh work dir: the end equals the unbroken
    run's (each rank continues its own RNG streams: random crops, flips and photometric changes here)."""
    import shutil
    common = ['train_cfg.max_iters=4', 'train_cfg.val_interval=1000', 'default_hooks.checkpoint.interval=2',
              'default_hooks.checkpoint.max_keep_ckpts=-1', 'train_dataloader.batch_size=2',
              'model.data_preprocessor.size=(64,64)', 'train_dataloader.dataset.pipeline.3.crop_size=(64,64)']
    train(SEG_DEMO, tmp_path / 'unbroken', *common)
    (tmp_path / 'resumed').mkdir()
    shutil.copy(tmp_path / 'unbroken' / 'iter_2.pth', tmp_path / 'resumed' / 'start.pth')
    log = train(SEG_DEMO, tmp_path / 'resumed', *common, '--resume', str(tmp_path / 'resumed' / 'start.pth'))
    assert 'resumed epoch: 0, iter: 2' in log
    end = [torch.load(tmp_path / d / 'iter_4.pth', map_location='cpu', weights_only=False)['state_dict']
           for d in ('unbroken', 'resumed')]
    assert max((end[0][k].double() - end[1][k].double()).abs().max().item() for k in end[0]) <= 1e-6


RANK_SCRIPT = """
import os
import torch
import torch.distributed as dist
from mmsparse.apis import run_tool

def main():
    dist.init_process_group('gloo')
    model = torch.nn.parallel.DistributedDataParallel(torch.nn.Linear(8, 8))
    model(torch.randn(4, 8)).sum().backward()
    gathered = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, torch.randn(16))
    print(f'rank {dist.get_rank()} done', flush=False)  # block-buffered pipe: must still reach the log
    behaviour = os.environ['BEHAVIOUR']
    if behaviour == 'raise' and dist.get_rank() == 1:
        raise ValueError('rank 1 failed on purpose')
    if behaviour == 'systemexit':
        raise SystemExit('stopped with a message')

run_tool(main)
print('unreachable: a distributed rank leaves through finish_distributed')
"""


@pytest.mark.parametrize('behaviour,code', [('ok', 0), ('raise', 1), ('systemexit', 1)])
def test_distributed_rank_exit_status_and_output(tmp_path, behaviour, code):
    """run_tool: a rank of a DDP run ends with main's status (0, 1 with the traceback, 1 with the SystemExit
    message), its buffered output flushed, and no interpreter finalization (gloo threads alive there abort)."""
    script = tmp_path / 'rank.py'
    script.write_text(RANK_SCRIPT)
    env = dict(os.environ, PYTHONPATH=REPO, BEHAVIOUR=behaviour, OMP_NUM_THREADS='1')
    proc = subprocess.run([sys.executable, '-m', 'torch.distributed.run', '--nproc_per_node', '2', '--master_port',
                           str(free_port()), str(script)], env=env, capture_output=True, text=True, timeout=300)
    log = proc.stdout + proc.stderr
    assert (proc.returncode == 0) == (code == 0), log[-3000:]
    assert 'rank 0 done' in proc.stdout and 'rank 1 done' in proc.stdout
    assert 'unreachable' not in log and 'terminate called' not in log
    if behaviour == 'raise':
        assert 'ValueError: rank 1 failed on purpose' in log and 'exitcode  : 1' in log
    if behaviour == 'systemexit':
        assert 'stopped with a message' in log


def test_single_process_tool_errors_propagate():
    """Without a process group run_tool changes nothing: the exception reaches the interpreter as usual."""
    def main():
        raise ValueError('plain error')

    with pytest.raises(ValueError, match='plain error'):
        run_tool(main)
    assert run_tool(lambda: None) is None
