"""Fast implementations against the reference ones: values, gradients, defaults, memory structure.

Every fast path must agree with its reference (float32, max abs < 1e-4) on random inputs of many sizes,
odd and padded ones included, in the forward and in every gradient. The references themselves are pinned
to the authors' golden fixtures by the per-family tests; here the fast paths are also run on those fixtures.
"""
import pytest
import torch

from mmsparse.converters import model_from_official
from mmsparse.ops.routing_attention import BRA_IMPLS, DEFAULT_BRA_IMPL, BiLevelRoutingAttention
from tests.conftest import assert_close_to_reference, load_fixture

ATOL = 1e-4


def max_diff(a, b):
    return (a - b).abs().max().item()


def clone_params(module):
    return {n: p.grad.clone() for n, p in module.named_parameters() if p.grad is not None}


def run_fwd_bwd(module, x, seed=0):
    """Output, input gradient and parameter gradients for a fixed random cotangent."""
    module.zero_grad()
    x = x.detach().clone().requires_grad_()
    out = module(x)
    g = torch.randn(out.shape, generator=torch.Generator().manual_seed(seed))
    out.backward(g)
    return out.detach(), x.grad, clone_params(module)


def assert_same_fwd_bwd(module, x, attr, ref_value, fast_value):
    setattr(module, attr, ref_value)
    ref = run_fwd_bwd(module, x)
    setattr(module, attr, fast_value)
    fast = run_fwd_bwd(module, x)
    assert max_diff(fast[0], ref[0]) < ATOL, f'output differs by {max_diff(fast[0], ref[0]):.3g}'
    assert max_diff(fast[1], ref[1]) < ATOL, f'input grad differs by {max_diff(fast[1], ref[1]):.3g}'
    assert ref[2].keys() == fast[2].keys()
    for name in ref[2]:
        d = max_diff(fast[2][name], ref[2][name])
        assert d < ATOL, f'grad of {name} differs by {d:.3g}'


# ------------------------------------------------------------------------------------------------ BRA

@pytest.mark.parametrize('n, p, t, c_qk, c_v, heads, topk', [
    (1, 4, 1, 8, 8, 1, 1),       # one token per region
    (2, 9, 6, 16, 24, 2, 3),     # qk_dim != dim
    (2, 16, 5, 32, 32, 4, 16),   # every region routed
    (3, 25, 7, 12, 12, 3, 4),    # odd sizes
])
def test_bra_token_attention_impls_agree(n, p, t, c_qk, c_v, heads, topk):
    torch.manual_seed(p + t)
    leaves = [torch.randn(n, p, t, c, requires_grad=True) for c in (c_qk, c_qk, c_v)]
    scale = c_qk ** -0.5
    results = {}
    for name in ('gather', 'sdpa'):
        for leaf in leaves:
            leaf.grad = None
        out, idx = BRA_IMPLS[name](*leaves, topk, heads, scale)
        out.backward(torch.ones_like(out) + out.detach())  # a non-uniform cotangent
        results[name] = (out.detach(), idx, [leaf.grad.clone() for leaf in leaves])
    (out_r, idx_r, g_r), (out_f, idx_f, g_f) = results['gather'], results['sdpa']
    assert out_f.shape == (n, p, t, c_v) and idx_f.shape == (n, p, topk) and idx_f.dtype == torch.int64
    assert torch.equal(idx_f, idx_r)  # same routing function on the same inputs: identical indices
    assert max_diff(out_f, out_r) < ATOL
    for name, a, b in zip('qkv', g_f, g_r):
        assert max_diff(a, b) < ATOL, f'grad {name}'


@pytest.mark.parametrize('size, n_win, topk, qk_dim', [
    ((16, 16), 4, 2, None),
    ((13, 10), 4, 3, None),     # padded bottom and right
    ((9, 23), 3, 9, 16),        # topk = all regions, padded
    ((7, 7), 7, 1, None),       # one token per region
    ((30, 17), 5, 4, 48),
])
def test_bra_layer_impls_agree_with_gradients(size, n_win, topk, qk_dim):
    torch.manual_seed(sum(size))
    layer = BiLevelRoutingAttention(32, num_heads=2, n_win=n_win, topk=topk, qk_dim=qk_dim, auto_pad=True)
    torch.nn.init.normal_(layer.qkv.bias, std=0.3)
    x = torch.randn(2, 32, *size)
    layer.record_routing = True
    layer.impl = 'gather'
    with torch.no_grad():
        layer(x)
    idx_ref = layer.routing_idx
    layer.impl = 'sdpa'
    with torch.no_grad():
        layer(x)
    assert torch.equal(layer.routing_idx, idx_ref)
    assert_same_fwd_bwd(layer, x, 'impl', 'gather', 'sdpa')


def test_bra_fast_default_and_reference_for_parity():
    assert DEFAULT_BRA_IMPL == 'sdpa'
    assert BiLevelRoutingAttention(32, num_heads=2).impl == 'sdpa'
    fx = load_fixture('bra_legacy_d64_h2_nwin4_topk4.pt')
    # model_from_official serves parity checks: it builds the reference
    layer = model_from_official('BiLevelRoutingAttention', fx['config'], fx['state_dict'])
    assert layer.impl == 'gather'


def test_bra_fast_path_matches_official_fixture():
    fx = load_fixture('bra_legacy_d64_h2_nwin4_topk4.pt')
    layer = model_from_official('BiLevelRoutingAttention', fx['config'], fx['state_dict'])
    layer.impl = 'sdpa'
    for i, (x, ref) in enumerate(zip(fx['inputs'], fx['outputs'])):
        with torch.no_grad():
            out = layer(x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)
        assert_close_to_reference(out, ref['output'], f'sdpa input {i}')


@pytest.mark.parametrize('name, cls, key', [('biformer_reduced_cls_autopad.pt', 'BiFormer', 'stages'),
                                            ('biformer_mm_reduced_autopad.pt', 'BiFormer_mm', 'dense_outs')])
def test_biformer_fast_path_matches_official_fixture(name, cls, key):
    fx = load_fixture(name)
    model = model_from_official(cls, fx['config'], fx['state_dict']).eval()
    bras = [m for m in model.modules() if isinstance(m, BiLevelRoutingAttention)]
    assert bras and all(m.impl == 'gather' for m in bras)
    for m in bras:
        m.impl = 'sdpa'
    for i, (x, ref) in enumerate(zip(fx['inputs'], fx['outputs'])):
        with torch.no_grad():
            outs = model(x)
        assert len(outs) == len(ref[key]) == 4
        for s, (ours, theirs) in enumerate(zip(outs, ref[key])):
            assert_close_to_reference(ours, theirs, f'{name} input {i} {key}[{s}] (sdpa)')


def saved_bytes(fn):
    """Bytes of the distinct tensors autograd saves for the backward of ``fn()``."""
    seen = {}

    def pack(t):
        seen[(t.data_ptr(), t.dtype, tuple(t.shape))] = t.numel() * t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn()
    return sum(seen.values())


def test_bra_fast_path_keeps_no_attention_matrix():
    """The fast path saves O(topk * tokens * C) for the backward, never the (T x topk*T) attention maps."""
    torch.manual_seed(0)
    n, p, t, c, heads, topk = 2, 16, 64, 32, 2, 2
    q, k, v = (torch.randn(n, p, t, c, requires_grad=True) for _ in range(3))
    fast = saved_bytes(lambda: BRA_IMPLS['sdpa'](q, k, v, topk, heads, c ** -0.5))
    ref = saved_bytes(lambda: BRA_IMPLS['gather'](q, k, v, topk, heads, c ** -0.5))
    qkv_bytes = 3 * q.numel() * 4
    attn_bytes = n * p * heads * t * topk * t * 4
    assert ref >= attn_bytes  # the reference keeps the softmax output
    # q, the routed K/V copies, the output and the log-sum-exp: a few times the qkv size
    assert fast <= (2 * topk + 3) * qkv_bytes, (fast, qkv_bytes)
    assert fast < ref - attn_bytes // 2


# ------------------------------------------------------------------------------------------------ STA

@pytest.mark.parametrize('size, stoken, n_iter', [
    ((16, 16), 4, 1),
    ((13, 10), 4, 2),          # padded, two rounds
    ((9, 23), (3, 5), 3),      # non-square cell, three rounds
    ((5, 6), 8, 1),            # a single cell: every neighbour but the centre is outside the grid
    ((24, 17), (2, 4), 1),
])
def test_sta_impls_agree_with_gradients(size, stoken, n_iter):
    from mmsparse.ops.super_token_attention import SuperTokenAttention
    torch.manual_seed(sum(size))
    layer = SuperTokenAttention(32, 4, stoken, n_iter=n_iter)
    x = torch.randn(2, 32, *size)
    with torch.no_grad():
        layer.impl = 'reference'
        out_r, ex_r = layer.forward_with_intermediates(x)
        layer.impl = 'fast'
        out_f, ex_f = layer.forward_with_intermediates(x)
    for key in ('stoken_refine_in', 'stoken_refine_out', 'association'):
        assert ex_f[key].shape == ex_r[key].shape, key
        assert max_diff(ex_f[key], ex_r[key]) < ATOL, key
    assert max_diff(out_f, out_r) < ATOL
    assert_same_fwd_bwd(layer, x, 'impl', 'reference', 'fast')


def test_sta_fast_is_default_and_model_from_official_builds_the_reference():
    from mmsparse.models.backbones.stvit import STViT
    from mmsparse.ops.super_token_attention import DEFAULT_STA_IMPL, SuperTokenAttention
    assert DEFAULT_STA_IMPL == 'fast' and SuperTokenAttention(16, 2).impl == 'fast'
    tiny = dict(embed_dims=[16, 32, 64, 128], depths=[1, 1, 1, 1], num_heads=[1, 2, 4, 4])
    assert all(m.impl == 'fast' for m in STViT(arch=tiny).modules() if isinstance(m, SuperTokenAttention))
    fx = load_fixture('stvit_stoken_attention_d64_s4_iter2.pt')
    assert model_from_official('StokenAttention', fx['config'], fx['state_dict']).impl == 'reference'


@pytest.mark.parametrize('name', ['stvit_reduced_layerscale.pt', 'stvit_reduced_nolayerscale.pt'])
def test_stvit_fast_path_matches_official_fixture(name):
    from mmsparse.ops.super_token_attention import SuperTokenAttention
    fx = load_fixture(name)
    model = model_from_official('STViT', fx['config'], fx['state_dict']).eval()
    stas = [m for m in model.modules() if isinstance(m, SuperTokenAttention) and not m.is_global]
    assert stas and all(m.impl == 'reference' for m in stas)
    for m in stas:
        m.impl = 'fast'
    for i, (x, ref) in enumerate(zip(fx['inputs'], fx['outputs'])):
        with torch.no_grad():
            outs = model(x)
        for s, (ours, theirs) in enumerate(zip(outs, ref['stages'])):
            assert_close_to_reference(ours, theirs, f'{name} input {i} stages[{s}] (fast)')


def test_sta_fast_under_bf16_autocast_keeps_float32_association():
    from mmsparse.ops.super_token_attention import SuperTokenAttention
    torch.manual_seed(0)
    layer = SuperTokenAttention(32, 4, 4)
    x = torch.randn(1, 32, 12, 10)
    with torch.autocast('cpu', dtype=torch.bfloat16):
        out, ex = layer.forward_with_intermediates(x)
    assert ex['association'].dtype == torch.float32 and torch.isfinite(out).all()
    layer.impl = 'reference'
    with torch.no_grad():
        ref = layer(x)
    assert max_diff(out.float(), ref) < 0.1  # bf16 projections; the association itself is float32


# ------------------------------------------------------------------------------------------------ AttnConv

@pytest.mark.parametrize('kwargs, size', [
    (dict(dim=32, num_heads=4, group_split=[3, 1], kernel_sizes=[3], window_size=8), (16, 16)),
    (dict(dim=48, num_heads=6, group_split=[2, 1, 3], kernel_sizes=[3, 7], window_size=3), (13, 10)),  # partial windows
    (dict(dim=32, num_heads=4, group_split=[4, 0], kernel_sizes=[5], window_size=2), (9, 7)),     # no global group
    (dict(dim=32, num_heads=4, group_split=[0, 4], kernel_sizes=[5], window_size=2), (9, 7)),     # global only
    (dict(dim=32, num_heads=2, group_split=[1, 1], kernel_sizes=[3], window_size=1, qkv_bias=False), (5, 11)),
])
def test_attn_conv_impls_agree_with_gradients(kwargs, size):
    from mmsparse.ops.attn_conv import AttnConv
    torch.manual_seed(sum(size))
    module = AttnConv(**kwargs)
    assert module.impl == 'fast'
    x = torch.randn(2, kwargs['dim'], *size)
    assert_same_fwd_bwd(module, x, 'impl', 'reference', 'fast')
    module.impl = 'fast'
    with torch.no_grad():
        out = module(x)
    assert out.is_contiguous() and out.shape == x.shape


def test_attn_conv_fast_path_matches_official_fixture():
    fx = load_fixture('cloformer_efficient_attention_d64.pt')
    module = model_from_official('EfficientAttention', fx['config'], fx['state_dict'])
    assert module.impl == 'reference'  # model_from_official serves parity checks
    module.impl = 'fast'
    for i, (x, ref) in enumerate(zip(fx['inputs'], fx['outputs'])):
        with torch.no_grad():
            assert_close_to_reference(module.forward_branches(x), ref['pre_proj'], f'pre_proj[{i}] (fast)')
            assert_close_to_reference(module(x), ref['output'], f'output[{i}] (fast)')


def test_cloformer_fast_path_matches_official_fixture():
    from mmsparse.ops.attn_conv import AttnConv
    fx = load_fixture('cloformer_reduced.pt')
    model = model_from_official(fx['official_class'], fx['config'], fx['state_dict']).eval()
    mixers = [m for m in model.modules() if isinstance(m, AttnConv)]
    assert mixers and all(m.impl == 'reference' for m in mixers)
    for m in mixers:
        m.impl = 'fast'
    for i, (x, ref) in enumerate(zip(fx['inputs'], fx['outputs'])):
        with torch.no_grad():
            outs = model(x)
        expected = list(ref['dense_taps']) + [ref['stages'][3]]  # taps of stages 1-3, then stage 4's output
        assert len(outs) == len(expected) == 4
        for s, (ours, theirs) in enumerate(zip(outs, expected)):
            assert_close_to_reference(ours, theirs, f'input {i} output {s} (fast)')


def test_bra_fast_path_recomputes_instead_of_keeping_routed_copies_at_large_topk():
    """From topk = BRA_RECOMPUTE_TOPK on, no routed K/V copy survives the forward; gradients are unchanged."""
    from mmsparse.ops.routing_attention import BRA_RECOMPUTE_TOPK
    torch.manual_seed(0)
    n, p, t, c, heads, topk = 2, 16, 20, 32, 2, 8
    assert topk >= BRA_RECOMPUTE_TOPK
    q, k, v = (torch.randn(n, p, t, c, requires_grad=True) for _ in range(3))
    fast = saved_bytes(lambda: BRA_IMPLS['sdpa'](q, k, v, topk, heads, c ** -0.5))
    # q, k, v themselves and the int64 region index; the routed copies would add 2 * topk * |k|
    assert fast <= 3 * q.numel() * 4 + n * p * topk * 8, fast
    for impl in ('gather', 'sdpa'):
        for leaf in (q, k, v):
            leaf.grad = None
        out, _ = BRA_IMPLS[impl](q, k, v, topk, heads, c ** -0.5)
        out.square().sum().backward()
        if impl == 'gather':
            ref = [leaf.grad.clone() for leaf in (q, k, v)]
    for name, a, b in zip('qkv', (q.grad, k.grad, v.grad), ref):
        assert max_diff(a, b) < ATOL, name
