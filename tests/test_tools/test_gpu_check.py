"""``tools/analysis_tools/gpu_check.py --dry-run``: the device check's own code runs on CPU with tiny shapes."""
import json
import os
import os.path as osp
import subprocess
import sys

from tests.conftest import REPO

SCRIPT = osp.join(REPO, 'tools/analysis_tools/gpu_check.py')


def test_gpu_check_dry_run_writes_both_files(tmp_path):
    env = dict(os.environ, PYTHONPATH=REPO, PYTHONWARNINGS='ignore')
    proc = subprocess.run([sys.executable, SCRIPT, '--out', str(tmp_path), '--dry-run'], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    with open(tmp_path / 'gpu_check.json') as f:
        result = json.load(f)
    md = (tmp_path / 'gpu_check.md').read_text()

    meta = result['meta']
    assert meta['dry_run'] is True and meta['torch'] == __import__('torch').__version__
    assert set(meta['packages']) == {'mmengine', 'mmcv', 'mmdet', 'mmseg'}

    tests = result['tests']
    assert tests['returncode'] == 0, tests
    assert 'passed' in tests['summary'] and not tests['failed']

    ops = result['operators']
    cases = {(r['case'], r['impl'], r['dtype']) for r in ops}
    for case in ('bra_biformer_s_stage1', 'bra_biformer_s_stage3'):
        for impl in ('reference', 'fast', 'flex'):
            assert {(case, impl, 'fp32'), (case, impl, 'bf16')} <= cases
    for case in ('sta_stvit_s_stage1', 'attnconv_cloformer_s_stage1'):
        assert (case, 'fast', 'bf16') in cases and (case, 'flex', 'fp32') not in cases
    for r in ops:
        assert 'error' not in r and 'skipped' not in r, r
        assert r['median_s'] > 0 and r['peak_mem_bytes'] is None  # no memory figure on CPU
        assert r['macs'] > 0 and r['tflops'] > 0 and 0 < r['of_sdpa']
        assert r['sdpa']['seq_len'] % 128 == 0 and r['sdpa']['tflops'] > 0

    steps = {(r['model'], r['step']): r for r in result['detectors']}
    assert set(steps) == {('maskrcnn_demo', 'backbone'), ('maskrcnn_demo', 'detector')}
    for r in steps.values():
        assert r['median_s'] > 0 or r.get('skipped'), r

    for heading in ('## Tests', '## Operators, fwd+bwd', '## Training steps (AMP)'):
        assert heading in md
    assert md.count('| bra_biformer_s_stage1') == 6 and 'maskrcnn_demo' in md


def test_gpu_check_refuses_to_run_without_cuda_unless_dry(tmp_path):
    """Runs on every machine: a GPU, if there is one, is hidden from the script (``CUDA_VISIBLE_DEVICES=''``);
    the test used to return early on a GPU machine, checking nothing there.

    Catches: the refusal coming after the script has started its output (``Check(args).save()`` moved above the
    CUDA test in ``main`` leaves an empty gpu_check.json behind), and, on a GPU machine, a missing refusal."""
    env = dict(os.environ, PYTHONPATH=REPO, CUDA_VISIBLE_DEVICES='')
    proc = subprocess.run([sys.executable, SCRIPT, '--out', str(tmp_path)], cwd=REPO, capture_output=True,
                          text=True, timeout=300, env=env)
    assert proc.returncode != 0 and 'no CUDA device' in proc.stderr
    assert not (tmp_path / 'gpu_check.json').exists()
