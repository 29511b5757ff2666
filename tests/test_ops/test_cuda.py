"""CUDA checks of every operator and backbone; the whole module is skipped without a CUDA device.

- fast == reference on CUDA in float32 (TF32 off): outputs, input gradients and every parameter gradient, at odd
  sizes (auto-padding, partial pooling windows, partial super-token cells);
- the fast paths under ``torch.use_deterministic_algorithms(True)``: no RuntimeError, bitwise-repeatable;
- fp16 / bf16 autocast training steps of each (reduced) backbone: finite, close to float32;
- one AMP training step of a Mask R-CNN and a UPerNet (skipped where mmdet / mmseg or mmcv's compiled ops are
  missing, e.g. on a device without them).

``tools/analysis_tools/gpu_check.py`` runs this file first on a lent device.
"""
import importlib.util
import os
import os.path as osp

import pytest
import torch

# cuBLAS is deterministic only with a fixed workspace; read when cuBLAS starts, so set before any CUDA work
os.environ.setdefault('CUBLAS_WORKSPACE_CONFIG', ':4096:8')

from mmsparse.ops import AttnConv, BiLevelRoutingAttention, GlobalAttentionLePE, SuperTokenAttention  # noqa: E402
from tests.conftest import AMP_BUILDERS as BUILDERS  # noqa: E402
from tests.conftest import ATOL, REPO, check_finite, fwd_bwd, max_diff  # noqa: E402

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason='needs a CUDA device (none here)')

#: name -> (builder, input shape); odd sizes exercise every padding path
OPERATORS = {
    'bra_topk1': (lambda: BiLevelRoutingAttention(32, num_heads=2, n_win=4, topk=1, auto_pad=True), (2, 32, 13, 10)),
    'bra_topk5_recompute': (lambda: BiLevelRoutingAttention(32, num_heads=4, n_win=4, topk=5, qk_dim=16,
                                                            auto_pad=True), (2, 32, 17, 21)),
    'global_lepe': (lambda: GlobalAttentionLePE(32, num_heads=4), (2, 32, 7, 9)),
    'attnconv': (lambda: AttnConv(32, num_heads=4, group_split=[3, 1], kernel_sizes=[3], window_size=4),
                 (2, 32, 13, 10)),
    'sta': (lambda: SuperTokenAttention(32, num_heads=2, stoken_size=4), (2, 32, 13, 10)),
    'sta_n_iter2': (lambda: SuperTokenAttention(32, num_heads=1, stoken_size=(3, 5), n_iter=2), (1, 32, 11, 17)),
}


@pytest.fixture(autouse=True)
def _no_tf32():
    """Float32 comparisons in real float32: TF32 matmuls / convolutions round to 10 mantissa bits."""
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def fwd_bwd_grads(module, x, g):
    """Output, input gradient and parameter gradients (by name) for the cotangent ``g``."""
    module.zero_grad()
    x = x.detach().clone().requires_grad_()
    out = module(x)
    out.backward(g)
    return out.detach(), x.grad, {n: p.grad.clone() for n, p in module.named_parameters() if p.grad is not None}


def assert_results_agree(ref, fast, atol=ATOL):
    assert max_diff(fast[0], ref[0]) < atol, f'output differs by {max_diff(fast[0], ref[0]):.3g}'
    assert max_diff(fast[1], ref[1]) < atol, f'input grad differs by {max_diff(fast[1], ref[1]):.3g}'
    assert ref[2].keys() == fast[2].keys()
    for name in ref[2]:
        assert max_diff(fast[2][name], ref[2][name]) < atol, f'grad of {name} differs'


def _built(name):
    torch.manual_seed(0)
    builder, shape = OPERATORS[name]
    module = builder().cuda().train()
    x = torch.randn(shape, device='cuda')
    with torch.no_grad():
        g = torch.randn_like(module(x))
    return module, x, g


@pytest.mark.parametrize('name', sorted(OPERATORS))
def test_fast_equals_reference_on_cuda_fp32(name):
    module, x, g = _built(name)
    module.impl = 'reference'
    ref = fwd_bwd_grads(module, x, g)
    module.impl = 'fast'
    assert_results_agree(ref, fwd_bwd_grads(module, x, g))


@pytest.mark.parametrize('name', sorted(OPERATORS))
def test_fast_path_is_deterministic_on_cuda(name):
    """The routed gather's backward (index_select -> index_add) and every other op have a deterministic CUDA
    implementation under ``use_deterministic_algorithms(True)``: no error, and two runs agree bit for bit."""
    module, x, g = _built(name)
    module.impl = 'fast'
    torch.use_deterministic_algorithms(True)
    try:
        first = fwd_bwd_grads(module, x, g)
        second = fwd_bwd_grads(module, x, g)
    finally:
        torch.use_deterministic_algorithms(False)
    assert torch.equal(first[0], second[0]) and torch.equal(first[1], second[1])
    for name_ in first[2]:
        assert torch.equal(first[2][name_], second[2][name_]), name_


@pytest.mark.parametrize('dtype', [torch.bfloat16, torch.float16], ids=['bf16', 'fp16'])
@pytest.mark.parametrize('name', sorted(BUILDERS) + ['biformer_flex'])
def test_backbone_autocast_training_step_on_cuda(name, dtype):
    torch.manual_seed(0)
    model = BUILDERS['biformer' if name == 'biformer_flex' else name]()
    if name == 'biformer_flex':
        model.impl = 'flex'  # BRA on FlexAttention, the stage-4 global attention on 'fast'
    model.init_weights()
    model.cuda()
    x = torch.randn(2, 3, 70, 90, device='cuda')
    outs, loss = fwd_bwd(model, x, 'cuda', dtype)
    check_finite(model, outs, loss, dtype)
    assert max(_autocast_errors(model.eval(), x, dtype)) < 0.05, f'{name} {dtype}: too far from float32'


@torch.no_grad()
def _autocast_errors(model, x, dtype):
    """Relative L2 error of each autocast output against the float32 one."""
    ref = model(x)
    with torch.autocast('cuda', dtype=dtype):
        return [((lo.float() - r).norm() / r.norm()).item() for r, lo in zip(ref, model(x))]


def _mmcv_ops_reason():
    for pkg in ('mmdet', 'mmseg', 'mmcv'):
        if importlib.util.find_spec(pkg) is None:
            return f'{pkg} is not installed'
    try:
        import mmcv.ops  # noqa: F401
    except (ImportError, ModuleNotFoundError, OSError) as e:
        return f'mmcv.ops (compiled RoIAlign / NMS) is not available: {e}'
    return None


@pytest.mark.parametrize('config, size, needs_ops', [
    ('configs/demo/maskrcnn_demo_synthetic.py', (256, 320), True),
    ('configs/demo/upernet_demo_synthetic.py', (256, 256), False),
])
def test_detector_and_segmentor_amp_training_step(config, size, needs_ops):
    reason = _mmcv_ops_reason() if needs_ops else next(
        (f'{p} is not installed' for p in ('mmseg', 'mmcv') if importlib.util.find_spec(p) is None), None)
    if reason:
        pytest.skip(reason)
    from mmsparse.benchmark.cases import build
    from mmsparse.benchmark.measure import one_run
    case = dict(kind='config', name=osp.join(REPO, config), batch=2, input_size=list(size), mode='train')
    built = build(case, device='cuda')
    before = {n: p.detach().clone() for n, p in built.module.named_parameters() if p.requires_grad}
    one_run(built, 'train', torch.device('cuda'), 'fp16')
    after = dict(built.module.named_parameters())
    assert all(torch.isfinite(after[n]).all() for n in before), 'non-finite weights after the AMP step'
    assert any(not torch.equal(before[n], after[n]) for n in before), 'the optimizer step changed nothing'
