"""BRA ``impl='flex'``: block-sparse FlexAttention over region blocks, no gathered K/V.

Forward parity with the reference path runs on CPU (eager FlexAttention, forward only); the backward only
exists on CUDA and is tested there when a device is present.
"""
import pytest
import torch

from mmsparse.ops import AttnConv, SuperTokenAttention
from mmsparse.ops.routing_attention import (BRA_IMPLS, BiLevelRoutingAttention, _flex_block, bra_fast, bra_flex,
                                            flex_available)
from tests.conftest import ATOL, max_diff

FLEX_OK, FLEX_REASON = flex_available()
needs_flex = pytest.mark.skipif(not FLEX_OK, reason=FLEX_REASON or 'FlexAttention available')
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(),
                                reason='FlexAttention has no backward on CPU: needs a CUDA device')


def _layer(embed_dims, num_heads, n_win, topk, qk_dim=None, side_dwconv=5):
    layer = BiLevelRoutingAttention(embed_dims, num_heads=num_heads, n_win=n_win, topk=topk, qk_dim=qk_dim,
                                    side_dwconv=side_dwconv, auto_pad=True)
    torch.nn.init.normal_(layer.qkv.bias, std=0.3)  # padded tokens carry the bias: make it matter
    return layer.eval()


# (embed_dims, heads, n_win, topk, qk_dim, H, W): odd sizes (auto-padded maps, regions padded to a block),
# a region exactly one block (16 tokens), topk of every region, different q/k and v head widths
CASES = [
    (32, 2, 4, 3, None, 13, 10),
    (24, 3, 3, 1, 12, 9, 9),
    (16, 1, 2, 4, None, 7, 11),
    (32, 4, 5, 7, None, 20, 15),
    (32, 2, 2, 1, None, 8, 8),
]


@needs_flex
@pytest.mark.parametrize('embed_dims, heads, n_win, topk, qk_dim, h, w', CASES)
def test_flex_forward_matches_reference(embed_dims, heads, n_win, topk, qk_dim, h, w):
    layer = _layer(embed_dims, heads, n_win, topk, qk_dim)
    layer.record_routing = True
    x = torch.randn(2, embed_dims, h, w)
    with torch.no_grad():
        layer.impl = 'reference'
        ref = layer(x)
        ref_idx = layer.routing_idx
        layer.impl = 'flex'
        out = layer(x)
    assert out.shape == x.shape
    assert torch.equal(layer.routing_idx, ref_idx)
    assert max_diff(out, ref) < ATOL, f'flex output differs by {max_diff(out, ref):.3g}'


@needs_flex
def test_flex_function_contract():
    """``bra_flex`` follows the BRA_IMPLS contract: (N, P, T, C_v) output, (N, P, topk) int64 indices."""
    q, k = torch.randn(2, 1, 9, 3, 8).unbind(0)  # 9 regions of 3 tokens, 8 q/k channels
    v = torch.randn(1, 9, 3, 12)
    out, idx = bra_flex(q, k, v, 2, 2, 0.5)
    ref, ref_idx = bra_fast(q, k, v, 2, 2, 0.5)
    assert out.shape == (1, 9, 3, 12) and idx.shape == (1, 9, 2) and idx.dtype == torch.int64
    assert torch.equal(idx, ref_idx)
    assert max_diff(out, ref) < ATOL


def test_flex_block_sizes():
    assert [_flex_block(t) for t in (1, 4, 16, 17, 20, 64, 100, 128, 129, 247, 256)] == \
        [16, 16, 16, 32, 32, 64, 128, 128, 256, 256, 256]


def test_flex_is_bra_only():
    assert 'flex' in BRA_IMPLS
    if FLEX_OK:
        assert BiLevelRoutingAttention(16, num_heads=2, n_win=2, topk=1, impl='flex').impl == 'flex'
    else:  # torch < 2.5: refused at construction, naming what runs instead
        with pytest.raises(RuntimeError, match=r"impl='flex' needs FlexAttention.*impl='fast'"):
            BiLevelRoutingAttention(16, num_heads=2, n_win=2, topk=1, impl='flex')
    with pytest.raises(ValueError, match="impl='flex' is not known"):
        AttnConv(16, num_heads=2, group_split=[1, 1], kernel_sizes=[3], impl='flex')
    with pytest.raises(ValueError, match="impl='flex' is not known"):
        SuperTokenAttention(16, num_heads=1, impl='flex')
    with pytest.raises(ValueError, match=r"impl='sparse' is not known.*BRA also takes 'flex'"):
        BiLevelRoutingAttention(16, num_heads=2, n_win=2, topk=1, impl='sparse')


@needs_flex
def test_flex_trains_on_cpu_through_the_fast_path():
    """No FlexAttention backward on CPU: under autograd the flex layer computes the fast path (same gradients)."""
    layer = _layer(16, 2, 3, 2).train()
    x = torch.randn(1, 16, 10, 11)
    grads = {}
    for impl in ('fast', 'flex'):
        layer.impl = impl
        layer.zero_grad()
        xi = x.clone().requires_grad_()
        layer(xi).square().mean().backward()
        grads[impl] = [xi.grad] + [p.grad.clone() for p in layer.parameters()]
    for a, b in zip(grads['fast'], grads['flex']):
        assert torch.equal(a, b)


@needs_flex
@needs_cuda
@pytest.mark.parametrize('embed_dims, heads, n_win, topk, qk_dim, h, w', CASES)
def test_flex_forward_backward_matches_reference_on_cuda(embed_dims, heads, n_win, topk, qk_dim, h, w):
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    layer = _layer(embed_dims, heads, n_win, topk, qk_dim).train().cuda()
    x = torch.randn(2, embed_dims, h, w, device='cuda')
    g = torch.randn(x.shape, device='cuda')
    results = {}
    for impl in ('reference', 'flex'):
        layer.impl = impl
        layer.zero_grad()
        xi = x.clone().requires_grad_()
        out = layer(xi)
        out.backward(g)
        results[impl] = [out.detach(), xi.grad] + [p.grad.clone() for p in layer.parameters()]
    names = ['output', 'input grad'] + [n for n, _ in layer.named_parameters()]
    for name, a, b in zip(names, results['reference'], results['flex']):
        assert max_diff(a, b) < 5 * ATOL, f'{name} differs by {max_diff(a, b):.3g}'
