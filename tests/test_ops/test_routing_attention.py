"""BiLevelRoutingAttention / GlobalAttentionLePE: parity with the authors' legacy operator, errors, contract."""
import pytest
import torch

from mmsparse.testing import model_from_official
from mmsparse.ops.routing_attention import BRA_IMPLS, BRA_RECOMPUTE_TOPK, BiLevelRoutingAttention, GlobalAttentionLePE
from tests.conftest import (ATOL, assert_close_to_reference, assert_impls_agree, assert_same_routing, load_fixture,
                            max_diff, padded_regions)


def test_bra_matches_official_legacy_operator():
    fx = load_fixture('bra_legacy_d64_h2_nwin4_topk4.pt')
    layer = model_from_official('BiLevelRoutingAttention', fx['config'], fx['state_dict'])
    assert isinstance(layer, BiLevelRoutingAttention)
    assert layer.scale == pytest.approx(64 ** -0.5)  # full qk_dim, not the head dim 32
    layer.record_routing = True
    n_win = fx['config']['n_win']
    for i, (x, ref) in enumerate(zip(fx['inputs'], fx['outputs'])):
        with torch.no_grad():
            out = layer(x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)  # the official operator is NHWC
        assert_close_to_reference(out, ref['output'], f'input {i} output')
        assert_same_routing(layer.routing_idx, ref['routing_topk_idx'],
                            padded_regions(x.shape[1], x.shape[2], n_win), f'input {i}')


def test_bra_scale_with_head_dim_would_not_match():
    """Guard against the most common re-implementation error: the per-head scale changes the outputs."""
    fx = load_fixture('bra_legacy_d64_h2_nwin4_topk4.pt')
    layer = model_from_official('BiLevelRoutingAttention', fx['config'], fx['state_dict'])
    layer.scale = 32 ** -0.5
    with torch.no_grad():
        out = layer(fx['inputs'][0].permute(0, 3, 1, 2)).permute(0, 2, 3, 1)
    assert (out - fx['outputs'][0]['output']).abs().max() > 1e-3


def test_bra_pads_before_projection():
    """Padded tokens must carry the qkv bias: zero-padding the input by hand gives the same cropped output."""
    torch.manual_seed(1)
    layer = BiLevelRoutingAttention(32, num_heads=2, n_win=4, topk=3, auto_pad=True).eval()
    torch.nn.init.normal_(layer.qkv.bias, std=0.5)  # make the bias matter
    x = torch.randn(1, 32, 13, 10)
    with torch.no_grad():
        out = layer(x)
        ref = layer(torch.nn.functional.pad(x, (0, 2, 0, 3)))[:, :, :13, :10]
    assert out.shape == x.shape
    torch.testing.assert_close(out, ref, rtol=0, atol=1e-6)


def test_bra_rejects_undivisible_size_without_auto_pad():
    layer = BiLevelRoutingAttention(32, num_heads=2, n_win=4, topk=2, auto_pad=False)
    assert layer(torch.randn(1, 32, 8, 12)).shape == (1, 32, 8, 12)
    with pytest.raises(ValueError, match='n_win=4.*auto_pad=True'):
        layer(torch.randn(1, 32, 9, 12))


@pytest.mark.parametrize('kwargs, match', [
    (dict(embed_dims=32, num_heads=3), 'num_heads=3 must divide'),
    (dict(embed_dims=32, n_win=2, topk=5), 'topk=5 must be <= n_win'),
    (dict(embed_dims=32, topk=0), 'topk must be a positive int'),
    (dict(embed_dims=32, n_win=0), 'n_win must be a positive int'),
    (dict(embed_dims=32, side_dwconv=4), 'side_dwconv must be 0'),
    (dict(embed_dims=32, impl='cuda'), "impl='cuda'.*choose one of"),
])
def test_bra_bad_arguments(kwargs, match):
    kwargs.setdefault('num_heads', 2)
    with pytest.raises(ValueError, match=match):
        BiLevelRoutingAttention(**kwargs)


def test_bra_wrong_input_layout():
    layer = BiLevelRoutingAttention(32, num_heads=2, n_win=2, topk=1)
    with pytest.raises(ValueError, match=r'NCHW tensor \(N, 32, H, W\)'):
        layer(torch.randn(1, 8, 8, 32))  # NHWC by mistake


def test_bra_backward_and_impl_contract():
    torch.manual_seed(0)
    layer = BiLevelRoutingAttention(16, num_heads=2, n_win=2, topk=2, qk_dim=8, auto_pad=True)
    x = torch.randn(2, 16, 6, 5, requires_grad=True)
    out = layer(x)
    assert out.shape == x.shape
    out.square().sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    assert layer.qkv.weight.grad.abs().sum() > 0
    # the BRA_IMPLS contract: (N, P, T, C) q/k/v in, (N, P, T, C_v) out and (N, P, topk) int64 indices
    q = torch.randn(1, 4, 3, 8, requires_grad=True)
    k = torch.randn(1, 4, 3, 8, requires_grad=True)
    v = torch.randn(1, 4, 3, 16)
    out, idx = BRA_IMPLS['reference'](q, k, v, 2, 2, 8 ** -0.5)
    assert idx.shape == (1, 4, 2) and idx.dtype == torch.int64 and out.shape == (1, 4, 3, 16)


def test_bra_gather_matches_dense_attention_when_all_regions_are_routed():
    """With topk = all regions, BRA is plain multi-head attention over all tokens (plus LePE)."""
    torch.manual_seed(0)
    n, p, t, c, m = 2, 4, 6, 16, 2
    q, k, v = torch.randn(n, p, t, c), torch.randn(n, p, t, c), torch.randn(n, p, t, c)
    scale = c ** -0.5
    out, idx = BRA_IMPLS['reference'](q, k, v, p, m, scale)
    assert sorted(idx[0, 0].tolist()) == list(range(p))
    qf, kf, vf = (t_.reshape(n, p * t, m, c // m).transpose(1, 2) for t_ in (q, k, v))
    ref = torch.softmax(qf @ kf.transpose(-2, -1) * scale, -1) @ vf
    torch.testing.assert_close(out.reshape(n, p * t, c), ref.transpose(1, 2).reshape(n, p * t, c),
                               rtol=1e-5, atol=1e-5)


def test_global_attention_any_size_and_errors():
    layer = GlobalAttentionLePE(64, num_heads=8)
    assert layer.qkv.bias is None and layer.scale == pytest.approx(8 ** -0.5)
    for h, w in ((5, 7), (1, 1), (3, 11)):
        assert layer(torch.randn(2, 64, h, w)).shape == (2, 64, h, w)
    with pytest.raises(ValueError, match='num_heads=6 must divide embed_dims=64'):
        GlobalAttentionLePE(64, num_heads=6)
    with pytest.raises(ValueError, match=r'NCHW tensor \(N, 64, H, W\)'):
        layer(torch.randn(2, 32, 4, 4))


@pytest.mark.parametrize('impl', ['reference', 'fast'])
@pytest.mark.parametrize('layer_cls', ['bra', 'global'])
def test_forward_nhwc_is_forward_on_the_other_layout(layer_cls, impl):
    """``forward_nhwc`` (what BiFormer's channels-last block calls) is ``forward`` with the channel axis last,
    exactly (same operations, same values) for an odd size that BRA pads; ``forward`` hands on a contiguous map
    whatever its input's strides."""
    torch.manual_seed(0)
    if layer_cls == 'bra':
        layer = BiLevelRoutingAttention(32, num_heads=2, n_win=3, topk=2, auto_pad=True, impl=impl)
    else:
        layer = GlobalAttentionLePE(32, num_heads=4, impl=impl)
    x = torch.randn(2, 32, 10, 13)
    with torch.no_grad():
        nchw = layer(x)
        nhwc = layer.forward_nhwc(x.permute(0, 2, 3, 1).contiguous())
        from_channels_last = layer(x.contiguous(memory_format=torch.channels_last))
    assert nhwc.shape == (2, 10, 13, 32) and nchw.is_contiguous() and from_channels_last.is_contiguous()
    torch.testing.assert_close(nhwc.permute(0, 3, 1, 2), nchw, rtol=0, atol=1e-6 if impl == 'fast' else 0)
    torch.testing.assert_close(from_channels_last, nchw, rtol=0, atol=1e-6 if impl == 'fast' else 0)


def _routing_by_hand(q, k, topk, scale, dtype):
    """Top-k region routing computed here from captured (N, P, T, C) q and k, with means and logits in ``dtype``."""
    q_r, k_r = q.to(dtype).mean(2), k.to(dtype).mean(2)
    return torch.topk((q_r * scale) @ k_r.transpose(-2, -1), topk, dim=-1).indices


@pytest.mark.parametrize('impl', ['reference', 'fast'])
def test_bra_routing_runs_in_float32_under_autocast(impl):
    """Under bf16 autocast the projections are bf16, but the routing must rank regions as a float64 computation
    on those same projections does, not as a bf16 one (which flips near-ties)."""
    n_win, topk, dim = 4, 3, 32
    captured = {}

    def capture(module, inputs, output):
        captured['qkv'] = output.detach()

    for seed in range(50):  # find an input on which bf16 routing would differ, so the check can fail
        torch.manual_seed(seed)
        layer = BiLevelRoutingAttention(dim, num_heads=2, n_win=n_win, topk=topk, auto_pad=True, impl=impl)
        layer.record_routing = True
        handle = layer.qkv.register_forward_hook(capture)
        x = torch.randn(2, dim, 15, 13)
        with torch.autocast('cpu', dtype=torch.bfloat16):
            out = layer(x)
        handle.remove()
        q, k, _ = captured['qkv'].split([dim, dim, dim], dim=-1)
        exact = _routing_by_hand(q, k, topk, layer.scale, torch.float64)
        low = _routing_by_hand(q, k, topk, layer.scale, torch.bfloat16)
        if not torch.equal(exact.sort(-1).values, low.sort(-1).values):
            break
    else:
        pytest.fail('no input made bf16 routing differ from float64 routing; the check would be vacuous')
    assert captured['qkv'].dtype == torch.bfloat16 and out.shape == x.shape and torch.isfinite(out).all()
    assert torch.equal(layer.routing_idx.sort(-1).values, exact.sort(-1).values)


# ------------------------------------------------------------------- fast vs reference implementation

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
    for name in ('reference', 'fast'):
        for leaf in leaves:
            leaf.grad = None
        out, idx = BRA_IMPLS[name](*leaves, topk, heads, scale)
        out.backward(torch.ones_like(out) + out.detach())  # a non-uniform cotangent
        results[name] = (out.detach(), idx, [leaf.grad.clone() for leaf in leaves])
    (out_r, idx_r, g_r), (out_f, idx_f, g_f) = results['reference'], results['fast']
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
    layer.impl = 'reference'
    with torch.no_grad():
        layer(x)
    idx_ref = layer.routing_idx
    layer.impl = 'fast'
    with torch.no_grad():
        layer(x)
    assert torch.equal(layer.routing_idx, idx_ref)
    assert_impls_agree(layer, x)


def test_bra_fast_default_and_reference_for_parity():
    assert BiLevelRoutingAttention(32, num_heads=2).impl == 'fast'
    fx = load_fixture('bra_legacy_d64_h2_nwin4_topk4.pt')
    # model_from_official serves parity checks: it builds the reference
    layer = model_from_official('BiLevelRoutingAttention', fx['config'], fx['state_dict'])
    assert layer.impl == 'reference'


def test_bra_fast_path_matches_official_fixture():
    fx = load_fixture('bra_legacy_d64_h2_nwin4_topk4.pt')
    layer = model_from_official('BiLevelRoutingAttention', fx['config'], fx['state_dict'])
    layer.impl = 'fast'
    for i, (x, ref) in enumerate(zip(fx['inputs'], fx['outputs'])):
        with torch.no_grad():
            out = layer(x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)
        assert_close_to_reference(out, ref['output'], f'sdpa input {i}')


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
    fast = saved_bytes(lambda: BRA_IMPLS['fast'](q, k, v, topk, heads, c ** -0.5))
    ref = saved_bytes(lambda: BRA_IMPLS['reference'](q, k, v, topk, heads, c ** -0.5))
    qkv_bytes = 3 * q.numel() * 4
    attn_bytes = n * p * heads * t * topk * t * 4
    assert ref >= attn_bytes  # the reference keeps the softmax output
    # q, the routed K/V copies, the output and the log-sum-exp: a few times the qkv size
    assert fast <= (2 * topk + 3) * qkv_bytes, (fast, qkv_bytes)
    assert fast < ref - attn_bytes // 2


def test_bra_fast_path_recomputes_instead_of_keeping_routed_copies_at_large_topk():
    """From topk = BRA_RECOMPUTE_TOPK on, no routed K/V copy survives the forward; gradients are unchanged."""
    torch.manual_seed(0)
    n, p, t, c, heads, topk = 2, 16, 20, 32, 2, 8
    assert topk >= BRA_RECOMPUTE_TOPK
    q, k, v = (torch.randn(n, p, t, c, requires_grad=True) for _ in range(3))
    fast = saved_bytes(lambda: BRA_IMPLS['fast'](q, k, v, topk, heads, c ** -0.5))
    # q, k, v themselves and the int64 region index; the routed copies would add 2 * topk * |k|
    assert fast <= 3 * q.numel() * 4 + n * p * topk * 8, fast
    for impl in ('reference', 'fast'):
        for leaf in (q, k, v):
            leaf.grad = None
        out, _ = BRA_IMPLS[impl](q, k, v, topk, heads, c ** -0.5)
        out.square().sum().backward()
        if impl == 'reference':
            ref = [leaf.grad.clone() for leaf in (q, k, v)]
    for name, a, b in zip('qkv', (q.grad, k.grad, v.grad), ref):
        assert max_diff(a, b) < ATOL, name


@pytest.mark.parametrize('topk', [1, BRA_RECOMPUTE_TOPK])
def test_bra_fast_under_deterministic_algorithms(topk):
    """``torch.use_deterministic_algorithms(True)``: the routed gather's backward (index_select -> index_add)
    runs (PyTorch gives it a deterministic implementation, on CUDA too) and gives the normal path's gradients."""
    from tests.conftest import run_fwd_bwd
    layer = BiLevelRoutingAttention(32, num_heads=2, n_win=3, topk=topk, auto_pad=True)
    x = torch.randn(2, 32, 10, 11)
    normal = run_fwd_bwd(layer, x)
    torch.use_deterministic_algorithms(True)
    try:
        det = run_fwd_bwd(layer, x)
    finally:
        torch.use_deterministic_algorithms(False)
    assert max_diff(det[0], normal[0]) < 1e-6 and max_diff(det[1], normal[1]) < 1e-6
    for name in normal[2]:
        assert max_diff(det[2][name], normal[2][name]) < 1e-6, name
