"""The loss guard in real runs of the demo UPerNet (tools/train.py and tools/dist_train.sh): a NaN injected at
iteration 3 (into a loss term, as a gradient-free NaN term, or into a backbone gradient) stops the run with the
iteration, the loss terms and the parameters named; iter_2.pth stays the last checkpoint, with finite weights;
``--resume`` from it ends exactly where a run that never saw the NaN ends, so nothing of the bad iteration
survives."""
import math

import pytest
import torch
from mmengine.config import Config

from tests.conftest import REPO, ensure_synthetic_data
from tests.test_tools.test_distributed import launch
from tests.test_tools.test_resume import ENV, max_abs_diff, train_cmd, weights

SEG_DEMO = f'{REPO}/configs/demo/upernet_demo_synthetic.py'
ITERS = 4
OPTIONS = [f'train_cfg.max_iters={ITERS}', 'train_cfg.val_interval=1000', 'default_hooks.checkpoint.interval=2',
           'default_hooks.checkpoint.max_keep_ckpts=-1', 'default_hooks.logger.interval=1',
           'train_dataloader.batch_size=2', 'model.data_preprocessor.size=(64,64)',
           'train_dataloader.dataset.pipeline.3.crop_size=(64,64)']
BACKBONE_PARAM = 'backbone.stem.1.conv.weight'


@pytest.fixture(scope='module', autouse=True)
def synthetic_data():
    ensure_synthetic_data()


def injected_config(path, **inject):
    """The demo with the base runtime's hooks (the guard among them) plus the test's NaN injection."""
    hooks = list(Config.fromfile(SEG_DEMO).custom_hooks)
    assert dict(type='mmsparse.StopOnNonFiniteHook') in hooks  # the guard comes from the base runtime
    path.write_text(f"""
_base_ = {SEG_DEMO!r}
custom_imports = dict(imports=['mmsparse', 'tests.test_engine.nonfinite_injection'], allow_failed_imports=False)
custom_hooks = {hooks!r} + [dict(type='InjectNonFiniteHook', **{inject!r})]
""")
    return str(path)


def run(cmd):
    import subprocess
    return subprocess.run(cmd, cwd=REPO, env=ENV, capture_output=True, text=True, timeout=900)


@pytest.fixture(scope='module')
def unbroken(tmp_path_factory):
    work = tmp_path_factory.mktemp('unbroken')
    proc = run(train_cmd(SEG_DEMO, work, *OPTIONS))
    assert proc.returncode == 0, proc.stderr[-5000:]
    return weights(work / f'iter_{ITERS}.pth')


def assert_last_good_checkpoint(work):
    assert sorted(p.name for p in work.glob('*.pth')) == ['iter_2.pth']
    ckpt = torch.load(work / 'iter_2.pth', map_location='cpu', weights_only=False)
    assert ckpt['meta']['iter'] == 2
    bad = [k for k, v in ckpt['state_dict'].items() if v.is_floating_point() and not torch.isfinite(v).all()]
    assert not bad, bad
    assert (work / 'last_checkpoint').read_text().strip() == str(work / 'iter_2.pth')


@pytest.mark.slow
@pytest.mark.parametrize('where', ['loss_term', 'constant_loss', 'grad'])
def test_injected_nan_stops_the_run_and_resume_loses_nothing(where, tmp_path, unbroken):
    config = injected_config(tmp_path / 'inject.py', iteration=3, where=where, param=BACKBONE_PARAM)
    work = tmp_path / 'work'
    proc = run(train_cmd(config, work, *OPTIONS))
    log = proc.stdout + proc.stderr
    assert proc.returncode != 0 and 'NonFiniteTrainingError' in log, log[-5000:]
    assert 'Non-finite training state at iteration 3 (epoch 1)' in log
    terms = log[log.index('loss terms of iteration 3: '):].splitlines()[0]
    if where == 'loss_term':  # the first term: the decode head's cross entropy
        assert 'decode.loss_ce=nan (non-finite)' in terms and 'aux.loss_ce=' in terms
    elif where == 'constant_loss':
        assert 'loss_injected=nan (non-finite)' in terms and 'non-finite gradients' not in log
    else:  # finite terms with their values, one named parameter
        assert '(non-finite)' not in terms
        value = float(terms.split('decode.loss_ce=')[1].split(',')[0])
        assert math.isfinite(value) and value > 0
        assert 'non-finite gradients in 1 of ' in log and f'parameters: {BACKBONE_PARAM}\n' in log
    assert f'--resume {work / "iter_2.pth"}' in log
    assert_last_good_checkpoint(work)

    proc = run(train_cmd(SEG_DEMO, work, *OPTIONS, resume=True))
    assert proc.returncode == 0, proc.stderr[-5000:]
    assert 'resumed epoch: 0, iter: 2' in proc.stdout + proc.stderr
    assert max_abs_diff(weights(work / f'iter_{ITERS}.pth'), unbroken) <= 1e-6


@pytest.mark.slow
def test_nan_on_one_rank_stops_every_rank_under_ddp(tmp_path):
    """A gradient-free NaN term on rank 1 only (rank 0's loss and every gradient stay finite): both ranks stop
    at iteration 3 with rank 1's finding, none hangs in a collective; iter_2.pth is intact and a 2-process
    ``--resume`` continues from it to the end."""
    config = injected_config(tmp_path / 'inject.py', iteration=3, where='constant_loss', rank=1)
    work = tmp_path / 'work'
    proc = launch('dist_train.sh', config, '2', '--work-dir', str(work), '--cfg-options', *OPTIONS, timeout=600)
    log = proc.stdout + proc.stderr
    assert proc.returncode != 0, log[-5000:]
    assert log.count('Non-finite training state at iteration 3') >= 2, log[-5000:]  # raised on both ranks
    assert 'rank 1: loss terms of iteration 3: ' in log and 'loss_injected=nan (non-finite)' in log
    rank0 = log[log.index('rank 0: loss terms of iteration 3: '):].splitlines()[0]
    assert '(non-finite)' not in rank0
    assert_last_good_checkpoint(work)
    proc = launch('dist_train.sh', SEG_DEMO, '2', '--work-dir', str(work), '--resume', '--cfg-options', *OPTIONS,
                  timeout=600)
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-5000:]
    assert 'resumed epoch: 0, iter: 2' in log and (work / f'iter_{ITERS}.pth').is_file()
    assert all(torch.isfinite(v).all() for v in weights(work / f'iter_{ITERS}.pth').values() if v.is_floating_point())
