"""tools/analysis_tools/benchmark.py and its package mmsparse.benchmark (cases, measure, report): what the numbers mean.

The tests marked ``NEW_API`` build layers with ``embed_dims=`` / backbones with ``impl=`` (issue 10's vocabulary);
the others use the STA operator (whose names are the same before and after the rename) or configs whose
operators are switched through their ``impl`` attribute.
"""
import json
import math
import os.path as osp
import resource

import pytest
import torch

from tests.conftest import REPO, load_tool

STA_CASE = dict(kind='layer', name='sta', shape=[2, 64, 128, 128], layer_args=dict(num_heads=1, stoken_size=8),
                mode='fwdbwd', device='cpu', dtype='fp32', threads=1)
TINY = ['--warmup', '1', '--repeats', '2', '--threads', '1', '--gemm-size', '128']


@pytest.fixture(scope='module')
def bench():
    """The CLI module, loaded from its file."""
    return load_tool('tools/analysis_tools/benchmark.py')


@pytest.fixture(scope='module')
def pkg():
    from mmsparse.benchmark import cases, measure, report
    return cases, measure, report


@pytest.fixture
def tiny_stvit_config(tmp_path):
    """Mask R-CNN with a two-block STViT (the STA ``impl`` names are the same in the old and new API)."""
    path = tmp_path / 'maskrcnn_tiny_stvit.py'
    path.write_text(f"""_base_ = ['{REPO}/configs/demo/maskrcnn_demo_synthetic.py']
model = dict(backbone=dict(_delete_=True, type='mmsparse.STViT', stoken_size=[4, 2, 1, 1],
                           arch=dict(embed_dims=[16, 32, 32, 32], depths=[1, 1, 1, 1], num_heads=[1, 1, 1, 1])),
             neck=dict(in_channels=[16, 32, 32, 32]))
""")
    return str(path)


# ------------------------------------------------------------------------------------------------ report

def test_ratios_and_table_are_time_a_over_time_b(pkg):
    _, _, report = pkg
    base = dict(params=10**6, repeats=3)
    results = {'reference': dict(base, time_median_s=.4, peak_mem_bytes=100 * 2**20, macs=2 * 10**9, gflops=30.,
                                 gemm_fraction=.25),
               'fast': dict(base, time_median_s=.1, peak_mem_bytes=25 * 2**20, macs=2 * 10**9, gflops=120.,
                            gemm_fraction=1.)}
    rat = report.ratios(results)
    assert list(rat) == ['fast'] and rat['fast'] == dict(speedup=4., mem_ratio=.25)
    case = dict(kind='layer', name='bra', shape=[1, 2, 3, 4], mode='fwdbwd')
    ref_row, fast_row = report.table([dict(case=case, results=results)]).splitlines()[2:]
    assert ref_row.endswith('| 30.0 | 25% | baseline |  |')
    assert fast_row.endswith('| 25 MiB | 1.00 M | 2.0 | 120.0 | 100% | 4.00x | 0.25x |')
    # one implementation: no ratio at all, and memory not measured gives no memory ratio
    assert report.ratios({'fast': results['fast']}) == {}
    assert report.ratios(dict(a=dict(time_median_s=1.), b=dict(time_median_s=2.))) == dict(
        b=dict(speedup=.5, mem_ratio=None))


def test_plot_sweeps_writes_png(pkg, tmp_path):
    _, _, report = pkg

    def rec(side, t_ref, t_fast):
        res = {impl: dict(time_median_s=t, peak_mem_bytes=int(t * 2**30)) for impl, t in
               (('reference', t_ref), ('fast', t_fast))}
        return dict(case=dict(kind='layer', name='bra', shape=[2, 64, side, side], sweep='bra',
                              layer_args=dict(topk=1), mode='fwdbwd'), results=res)

    path = tmp_path / 'suite.json'
    path.write_text(json.dumps(dict(meta={}, records=[rec(128, .4, .2), rec(64, .1, .05), dict(
        case=dict(kind='backbone', name='x', batch=1, input_size=[8, 8], mode='fwd'), results={})])))
    (png, ) = report.plot_sweeps(str(path), str(tmp_path / 'fig'))
    assert osp.basename(png) == 'bra_sweep.png'
    with open(png, 'rb') as f:
        assert f.read(8) == b'\x89PNG\r\n\x1a\n'


# ------------------------------------------------------------------------------------------------ measure

def test_flop_convention(pkg):
    _, measure, _ = pkg
    assert measure.flop_per_run(10, 'fwd') == 20  # 2 FLOPs per multiply-add
    assert measure.flop_per_run(10, 'fwdbwd') == measure.flop_per_run(10, 'train') == 60  # backward = 2 forwards


def test_gemm_roofline(pkg):
    _, measure, _ = pkg
    g = measure.gemm_gflops('cpu', size=64, repeats=3)
    assert g['gemm_size'] == 64 and 0 < g['gemm_best_s'] <= g['gemm_median_s']
    # the roofline is the best sample (load only slows a GEMM down); the median is reported beside it
    assert g['gemm_gflops'] == pytest.approx(2 * 64**3 / g['gemm_best_s'] / 1e9)
    assert g['gemm_median_gflops'] == pytest.approx(2 * 64**3 / g['gemm_median_s'] / 1e9)
    assert g['gemm_median_gflops'] <= g['gemm_gflops']


def test_compare_json_schema_and_ratios_from_medians(bench, pkg, tmp_path, capsys):
    cases, _, _ = pkg
    out = tmp_path / 'res.json'
    records = bench.main(['--layer', 'sta', '--shape', '1,16,24,20', '--layer-args', 'num_heads=2',
                          'stoken_size=4', '--compare', 'reference', 'fast', *TINY, '--out', str(out)])
    data = json.loads(out.read_text())
    meta = data['meta']
    assert meta['threads'] == 1 and meta['repeats'] == 2 and meta['gemm_size'] == 128 and meta['gemm_gflops'] > 0
    (rec, ) = data['records']
    assert rec['case']['layer_args'] == dict(num_heads=2, stoken_size=4) and rec['case']['mode'] == 'fwdbwd'
    assert list(rec['results']) == ['reference', 'fast']
    built = cases.build(rec['case'], 'fast')
    assert built.module.impl == 'fast' and built.args[0].shape == (1, 16, 24, 20)
    for r in rec['results'].values():
        assert r['repeats'] == 2 and 0 < r['time_min_s'] <= r['time_median_s'] <= r['time_max_s']
        assert r['params'] == sum(p.numel() for p in built.module.parameters()) > 0
        assert r['macs'] > 0 and r['flop_per_run'] == 6 * r['macs']
        assert r['gflops'] == pytest.approx(r['flop_per_run'] / r['time_median_s'] / 1e9)
        assert r['gemm_fraction'] == pytest.approx(r['gflops'] / meta['gemm_gflops'])
        assert r['images_per_s'] == pytest.approx(1 / r['time_median_s'])
        # the memory subprocess ran; the RSS delta of a layer this small is at allocator-noise level, so only
        # its type is checked here (test_memory_subprocess_sees_a_known_allocation checks the value)
        assert r['mem_error'] is None and isinstance(r['peak_mem_bytes'], int)
        assert r['peak_mem_total_bytes'] > max(r['peak_mem_bytes'], 2**20)
    ref, fast = rec['results']['reference'], rec['results']['fast']
    assert rec['ratios']['fast']['speedup'] == pytest.approx(ref['time_median_s'] / fast['time_median_s'])
    assert records[0]['ratios'] == rec['ratios']
    printed = capsys.readouterr().out
    assert f'| {rec["ratios"]["fast"]["speedup"]:.2f}x |' in printed.splitlines()[-2]


def test_memory_subprocess_sees_a_known_allocation(pkg):
    _, measure, _ = pkg
    res = measure.memory_in_subprocess(STA_CASE, 'fast', 8., 300)
    assert 'error' not in res, res
    # the output and its gradient (from the loss) are alive together: 2 maps of 2*64*128*128 float32
    assert res['peak_bytes'] >= 2 * 2 * 64 * 128 * 128 * 4
    assert res['total_bytes'] > res['peak_bytes']
    assert res['method'].startswith('cpu peak RSS')


def test_memory_guard_reports_an_error(pkg):
    _, measure, _ = pkg
    res = measure.memory_in_subprocess(STA_CASE, 'fast', .5, 300)  # 0.5 GiB of address space: torch cannot load
    assert res['error'].startswith('exit ')


def test_address_space_limit_only_on_cpu(bench, pkg, monkeypatch):
    _, measure, _ = pkg
    calls = []
    monkeypatch.setattr(measure.resource, 'setrlimit', lambda *a: calls.append(a))
    assert not measure.limit_address_space(20., 'cuda') and not measure.limit_address_space(0, 'cpu')
    assert calls == []
    assert measure.limit_address_space(1.5, 'cpu')
    assert calls == [(resource.RLIMIT_AS, (int(1.5 * 2**30), ) * 2)]
    calls.clear()
    args = ['--layer', 'sta', '--shape', '1,8,8,8', '--no-memory', '--no-flops', '--gemm-size', '0',
            '--warmup', '0', '--repeats', '1']
    bench.main(args + ['--device', 'cpu'])
    assert len(calls) == 1  # the timing process on CPU is guarded too
    calls.clear()
    try:
        bench.main(args + ['--device', 'cuda'])
    except (RuntimeError, AssertionError):  # no CUDA here: it fails at the first .to('cuda'), after the decision
        assert not torch.cuda.is_available()
    assert calls == []


def test_train_compare_steps_each_copy_with_its_own_optimizer(pkg, tiny_stvit_config):
    """Both copies start equal, run the other implementation only, and both change in a train step."""
    cases, measure, _ = pkg
    case = dict(kind='config', name=tiny_stvit_config, batch=1, input_size=[64, 96], mode='train', device='cpu',
                dtype='fp32')
    builts = measure.build_all(case, ['reference', 'fast'], 'cpu')
    before = {name: {k: v.detach().clone() for k, v in b.module.named_parameters()} for name, b in builts.items()}
    ref_state = builts['reference'].module.state_dict()
    for k, v in builts['fast'].module.state_dict().items():
        assert torch.equal(v, ref_state[k]), k  # same weights and buffers
    for name, b in builts.items():
        assert {m.impl for m in b.module.modules() if isinstance(getattr(m, 'impl', None), str)} == {name}
    measure.time_runs(builts, 'train', torch.device('cpu'), 'fp32', warmup=0, repeats=1)
    for name, b in builts.items():
        # parameters only: BN running statistics change without any optimizer
        changed = [k for k, v in b.module.named_parameters() if not torch.equal(v, before[name][k])]
        assert any(k.startswith('backbone.') for k in changed), name  # the optimizer stepped this copy


def test_fwdbwd_config_on_synthetic_segmentation(pkg):
    cases, measure, _ = pkg
    case = dict(kind='config', name='configs/demo/upernet_demo_synthetic.py', batch=2, input_size=[64, 64],
                mode='fwdbwd')
    built = cases.build(case)
    gt = [s.gt_sem_seg.data for s in built.args[0]['data_samples']]
    assert gt[0].shape == (1, 64, 64) and not torch.equal(gt[0], gt[1])
    measure.one_run(built, 'fwdbwd', torch.device('cpu'), 'fp32')
    assert all(p.grad is None for p in built.module.parameters())  # dropped after the run


def test_set_impl(pkg):
    from mmsparse import set_impl
    cases, _, _ = pkg
    with pytest.raises(ValueError, match=r"impl='sdpa' is not known; choose one of \['reference', 'fast'\]"):
        set_impl(torch.nn.Linear(2, 2), 'sdpa')
    with pytest.raises(ValueError, match='Linear contains no mmsparse operator'):
        set_impl(torch.nn.Linear(2, 2), 'fast')
    sta = cases.build(dict(kind='layer', name='sta', shape=[1, 8, 8, 8], mode='fwd'), 'reference').module
    assert sta.impl == 'reference' and set_impl(sta, 'fast') == 2 and sta.impl == sta.refine.impl == 'fast'


# -------------------------------------------------------------------------------------------- cases, CLI

def test_bad_arguments(bench, pkg):
    cases, _, _ = pkg
    for argv in (['--layer', 'bra'], ['--layer', 'bra', '--shape', '1,2,3'], ['--layer', 'bra', '--shape', 'a,b'],
                 ['--layer', 'bra', '--shape', '1,2,3,4', '--impl', 'gather'],
                 ['--layer', 'sta', '--shape', '1,2,3,4', '--compare', 'reference', 'sdpa']):
        with pytest.raises(SystemExit):
            bench.parse_args(argv)
    with pytest.raises(ValueError, match='key=value'):
        bench.parse_kwargs(['topk'])
    assert bench.parse_kwargs(['group_split=[3,1]', 'auto_pad=True', 'qk_dim=None']) == dict(
        group_split=[3, 1], auto_pad=True, qk_dim=None)
    bad = [(dict(kind='net', name='x'), "kind must be one of"),
           (dict(kind='layer', name='bra'), r"missing keys \['shape'\]"),
           (dict(kind='layer', name='bra', shape=[1, 2, 3, 4], topk=2), r"unknown keys \['topk'\]"),
           (dict(kind='layer', name='flash', shape=[1, 2, 3, 4]), "'flash' is not known"),
           (dict(kind='backbone', name='biformer-s', batch=1, input_size=[8, 8], mode='eval'), "mode='eval'"),
           (dict(kind='layer', name='bra', shape=[1, 2, 3]), 'shape')]
    for case, message in bad:
        with pytest.raises(ValueError, match=message):
            cases.check_case(case)


def test_impl_flex_times_bra_and_is_refused_elsewhere(bench, pkg, tmp_path):
    """``--impl flex`` (BRA's FlexAttention path) is accepted and reaches the operator; an operator without it
    names what it accepts."""
    cases, _, _ = pkg
    out = tmp_path / 'flex.json'
    bench.main(['--layer', 'bra', '--shape', '1,16,16,16', '--layer-args', 'num_heads=1', 'n_win=4', 'topk=1',
                '--impl', 'flex', '--mode', 'fwd', '--no-memory', '--no-flops', *TINY, '--out', str(out)])
    (rec, ) = json.loads(out.read_text())['records']
    assert list(rec['results']) == ['flex']
    case = dict(kind='layer', name='bra', shape=[1, 16, 16, 16], layer_args=dict(num_heads=1, n_win=4, topk=1))
    assert cases.build(case, 'flex').module.impl == 'flex'
    with pytest.raises(ValueError, match="impl='flex'"):
        cases.build(dict(STA_CASE), 'flex')
    with pytest.raises(ValueError, match="impl='gather'.*'flex'"):
        cases.check_impl('gather')


def test_suite_file_covers_the_targets(pkg):
    cases, _, report = pkg
    suite = cases.load_suite('cpu_reference_vs_fast')
    assert suite == cases.load_suite(osp.join(REPO, 'tools/analysis_tools/suites/cpu_reference_vs_fast.yaml'))
    labels = [report.case_label(dict(c, mode=c['mode'])) for c, _ in suite]
    for text in ('layer bra 2x64x200x304 num_heads=2 n_win=16 topk=1 qk_dim=64 fwdbwd',
                 'layer bra 2x256x50x76 num_heads=8 n_win=16 topk=16 qk_dim=256 fwd',
                 'layer sta 2x64x200x304', 'layer attnconv 2x64x200x304', 'backbone biformer-s 8x3x224x224',
                 'backbone stvit-s 2x3x800x1216', 'config maskrcnn_biformer_s_coco.py 2x3x800x1216  train'):
        assert any(text in label for label in labels), text
    assert all(impls == ['reference', 'fast'] for c, impls in suite if c['kind'] != 'config')
    assert {c['sweep'] for c, _ in suite if c.get('sweep')} == {'bra', 'sta'}
    (config, impls), = [(c, i) for c, i in suite if c['kind'] == 'config']
    assert impls == ['fast'] and osp.exists(cases.config_path(config['name']))


def test_suite_from_a_path_runs_and_records_errors(bench, tmp_path):
    suite = tmp_path / 'mine.yaml'
    suite.write_text("""impls: [reference]
cases:
  - {kind: layer, name: sta, shape: [1, 8, 16, 16], layer_args: {num_heads: 2}, mode: fwd}
  - {kind: config, name: configs/does_not_exist.py, batch: 1, input_size: [32, 32], impls: [fast]}
""")
    out = tmp_path / 'res.json'
    records = bench.main(['--suite', str(suite), '--no-memory', '--no-flops', *TINY, '--out', str(out),
                          '--figures', str(tmp_path / 'fig')])
    assert [list(r['results']) for r in records] == [['reference'], []]
    assert 'does_not_exist.py' in records[1]['error']
    assert json.loads(out.read_text())['records'][0]['case']['mode'] == 'fwd'
    only = bench.main(['--suite', str(suite), '--only', 'layer sta', '--no-memory', '--no-flops', *TINY])
    assert len(only) == 1


@pytest.mark.parametrize('text, message', [
    ('cases: [{kind: layer, name: sta, shape: [1, 8, 8, 8], impls: [sdpa]}]', "impl='sdpa' is not known"),
    ('cases: [{kind: layer, name: sta, shape: [1, 8, 8, 8], stoken: 4}]', r"unknown keys \['stoken'\]"),
    ('suite: []', 'needs a list "cases"'),
])
def test_bad_suites(pkg, tmp_path, text, message):
    cases, _, _ = pkg
    path = tmp_path / 'bad.yaml'
    path.write_text(text)
    with pytest.raises(ValueError, match=message):
        cases.load_suite(str(path))
    with pytest.raises(ValueError, match=r"not one of the suites \[.*'cpu_reference_vs_fast'"):
        cases.load_suite('issue7')


# ----------------------------------------------------------------------- need the renamed API (issue 10)

@pytest.mark.parametrize('name, shape, layer_args', [
    ('bra', [1, 32, 20, 24], dict(num_heads=2, n_win=4, topk=3)),
    ('attnconv', [1, 32, 20, 24], dict(num_heads=4, window_size=4)),
    ('sta', [1, 32, 20, 24], dict(num_heads=2, stoken_size=4)),
])
def test_NEW_API_layers_build_with_impl_and_agree(pkg, name, shape, layer_args):
    cases, measure, _ = pkg
    case = dict(kind='layer', name=name, shape=shape, layer_args=layer_args, mode='fwd')
    builts = measure.build_all(case, ['reference', 'fast'], 'cpu')
    outs = {}
    for impl, b in builts.items():
        assert b.module.impl == impl
        with torch.no_grad():
            outs[impl] = b.module(*b.args)
    torch.testing.assert_close(outs['fast'], outs['reference'], atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize('name', ['biformer-t', 'cloformer-xxs', 'stvit-s'])
def test_NEW_API_backbones_build_with_impl(pkg, name):
    cases, _, _ = pkg
    built = cases.build(dict(kind='backbone', name=name, batch=1, input_size=[64, 64], mode='fwd'), 'reference')
    impls = {m.impl for m in built.module.modules() if isinstance(getattr(m, 'impl', None), str)}
    assert impls == {'reference'}


def test_NEW_API_flops_count_routed_attention(pkg):
    """MACs come from mmsparse.utils.complexity and include the routed-attention products."""
    cases, measure, _ = pkg
    built = cases.build(dict(kind='layer', name='bra', shape=[1, 32, 16, 16],
                             layer_args=dict(num_heads=2, n_win=4, topk=2), mode='fwd'))
    macs, note = measure.macs_of(built)
    assert macs is not None, note
    tokens, c = 16 * 16, 32
    projections = tokens * c * (3 * c) + tokens * c * c  # qkv and proj linears
    attention = tokens * (2 * 16) * (c + c)  # every token attends to topk=2 regions of 16 tokens
    assert macs >= projections + attention
    assert not math.isnan(macs)


def test_backbone_constructor_overrides(bench, pkg):
    """--layer-args also reach a --backbone (e.g. the authors' n_win 8 at 512) and name the case."""
    cases, _, report = pkg
    built = cases.build(dict(kind='backbone', name='biformer-t', batch=1, input_size=[64, 64], mode='fwd',
                             layer_args=dict(n_win=2, topks=(1, 2, 4, -2))))
    assert {m.n_win for m in built.module.modules() if hasattr(m, 'n_win')} == {2}
    parsed = bench.cases_of(bench.parse_args(['--backbone', 'biformer-t', '--input-size', '64', '64',
                                              '--layer-args', 'n_win=2']))
    case = parsed[0][0]
    assert case['layer_args'] == dict(n_win=2) and 'n_win=2' in report.case_label(case)
    with pytest.raises(TypeError, match='no_such_arg'):
        cases.build(dict(kind='backbone', name='biformer-t', batch=1, input_size=[64, 64], mode='fwd',
                         layer_args=dict(no_such_arg=1)))


def test_compile_runs_every_timed_step_through_the_compiled_module(bench, pkg, monkeypatch, tmp_path):
    """--compile: warm-up and timed runs call torch.compile's module; FLOPs, labels and the allocator recorded."""
    _, _, report = pkg
    calls = []

    def fake_compile(module):
        def compiled(*args):
            calls.append(module)
            return module(*args)
        return compiled

    monkeypatch.setattr(torch, 'compile', fake_compile)
    monkeypatch.setenv('MALLOC_TOP_PAD_', '1048576')
    out = tmp_path / 'res.json'
    bench.main(['--layer', 'sta', '--shape', '1,16,24,20', '--layer-args', 'num_heads=2', 'stoken_size=4',
                '--compile', '--mode', 'fwd', '--no-memory', *TINY, '--out', str(out)])
    data = json.loads(out.read_text())
    (rec, ) = data['records']
    assert rec['case']['compile'] is True and report.case_label(rec['case']).endswith('fwd fp32 compiled')
    assert len(calls) == 1 + 2 and all(m is calls[0] for m in calls)  # warm-up + repeats, one compiled module
    assert rec['results']['default']['macs'] > 0  # counted on the eager module
    assert data['meta']['allocator'] == {'MALLOC_TOP_PAD_': '1048576'}


def test_compile_bad_arguments(bench, pkg):
    cases, _, _ = pkg
    with pytest.raises(SystemExit):
        bench.parse_args(['--layer', 'sta', '--shape', '1,8,8,8', '--compile', '--warmup', '0'])
    with pytest.raises(SystemExit):
        bench.parse_args(['--config', 'configs/demo/maskrcnn_demo_synthetic.py', '--compile'])
    for case, message in [(dict(kind='config', name='x.py', batch=1, input_size=[8, 8], compile=True), 'not to a'),
                          (dict(kind='layer', name='sta', shape=[1, 8, 8, 8], compile='yes'), 'true or false'),
                          (dict(kind='layer', name='sta', shape=[1, 8, 8, 8], compile=True, warmup=0), 'warmup')]:
        with pytest.raises(ValueError, match=message):
            cases.check_case(case)


@pytest.mark.slow
def test_compile_with_inductor_times_a_layer(bench, tmp_path):
    """A real torch.compile (inductor) of a small STA layer: the timed runs are the compiled ones, not the compile."""
    out = tmp_path / 'res.json'
    bench.main(['--layer', 'sta', '--shape', '1,16,24,20', '--layer-args', 'num_heads=2', 'stoken_size=4',
                '--compile', '--mode', 'fwd', '--no-memory', *TINY, '--out', str(out)])
    r = json.loads(out.read_text())['records'][0]['results']['default']
    # compiling takes seconds; a timed run of this layer takes milliseconds
    assert r['repeats'] == 2 and 0 < r['time_max_s'] < 1.0 and r['gflops'] > 0
