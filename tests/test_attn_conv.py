"""AttnConv (CloFormer's EfficientAttention): golden parity, any-size semantics, implementations, bad arguments."""
import pytest
import torch
import torch.nn.functional as F

from mmsparse.converters import model_from_official
from mmsparse.ops import GLOBAL_ATTENTION_IMPLS, AttnConv
from mmsparse.registry import MODELS
from tests.conftest import assert_close_to_reference, load_fixture

FIXTURE = 'cloformer_efficient_attention_d64.pt'


@pytest.mark.parametrize('impl', sorted(GLOBAL_ATTENTION_IMPLS))
def test_matches_official_fixture(impl):
    fx = load_fixture(FIXTURE)
    module = model_from_official(fx['official_class'], fx['config'], fx['state_dict'])
    assert isinstance(module, AttnConv) and not module.training
    module.attn_impl = impl
    for i, (x, ref) in enumerate(zip(fx['inputs'], fx['outputs'])):
        with torch.no_grad():
            assert_close_to_reference(module.forward_branches(x), ref['pre_proj'], f'pre_proj[{i}] ({impl})')
            assert_close_to_reference(module(x), ref['output'], f'output[{i}] ({impl})')


def test_state_dict_keys_are_the_authors():
    fx = load_fixture(FIXTURE)
    cfg = fx['config']
    module = AttnConv(cfg['dim'], cfg['num_heads'], cfg['group_split'], cfg['kernel_sizes'], cfg['window_size'])
    ours = {k: tuple(v.shape) for k, v in module.state_dict().items()}
    assert ours == {k: tuple(v.shape) for k, v in fx['state_dict'].items()}


def _naive_global_branch(m, x):
    """Independent global branch at any size: every key averages the real pixels of its window."""
    ws, d = m.window_size, m.head_dim
    b, _, h, w = x.shape
    q = m.global_q(x).reshape(b, -1, d, h * w).transpose(-1, -2)
    keys = []
    for r in range(0, h, ws):
        for c in range(0, w, ws):
            keys.append(x[:, :, r:r + ws, c:c + ws].mean(dim=(2, 3)))
    pooled = torch.stack(keys, dim=-1)[..., None]  # (B, C, n_keys, 1)
    k, v = m.global_kv(pooled).reshape(b, 2, -1, d, pooled.shape[2]).transpose(-1, -2).unbind(1)
    attn = torch.softmax(q @ k.transpose(-1, -2) * m.scale, dim=-1)
    return (attn @ v).transpose(-1, -2).reshape(b, -1, h, w)


@pytest.mark.parametrize('impl', sorted(GLOBAL_ATTENTION_IMPLS))
@pytest.mark.parametrize('size', [(16, 24), (13, 10), (5, 7), (3, 3), (1, 9)])
def test_any_size_global_keys_average_real_pixels(size, impl):
    m = AttnConv(32, 4, [1, 1, 2], [3, 5], window_size=4, attn_impl=impl).eval()
    x = torch.randn(2, 32, *size)
    with torch.no_grad():
        pre = m.forward_branches(x)
        out = m(x)
        ref = _naive_global_branch(m, x)
    assert out.shape == x.shape and torch.isfinite(out).all()
    torch.testing.assert_close(pre[:, 16:], ref, atol=1e-5, rtol=1e-5)


def test_local_branch_ignores_the_pooling_window():
    """The local groups never see padding: for a local-only mixer the window size is irrelevant."""
    x = torch.randn(1, 16, 11, 9)
    a = AttnConv(16, 2, [2, 0], [3], window_size=1).eval()
    b = AttnConv(16, 2, [2, 0], [3], window_size=8).eval()
    b.load_state_dict(a.state_dict())
    assert not hasattr(a, 'global_q')
    with torch.no_grad():
        torch.testing.assert_close(a(x), b(x), atol=0, rtol=0)


def test_border_pixels_influence_the_global_keys():
    """Unlike the authors' floor, pixels in a partial last window still reach every query."""
    m = AttnConv(16, 2, [0, 2], [3], window_size=4).eval()
    x = torch.randn(1, 16, 9, 9)
    x2 = x.clone()
    x2[..., 8, 8] += 5.0  # bottom-right pixel, alone in its pooling window
    with torch.no_grad():
        diff = (m(x2) - m(x)).abs()
    assert diff[..., 0, 0].max() > 1e-4  # a far query sees it through the keys


def test_implementations_agree_with_gradients():
    torch.manual_seed(1)
    x = torch.randn(2, 48, 19, 23)
    outs, grads = [], []
    ref = AttnConv(48, 6, [2, 1, 3], [3, 7], window_size=3, attn_impl='reference')
    for impl in sorted(GLOBAL_ATTENTION_IMPLS):
        m = AttnConv(48, 6, [2, 1, 3], [3, 7], window_size=3, attn_impl=impl)
        m.load_state_dict(ref.state_dict())
        xi = x.clone().requires_grad_()
        y = m(xi)
        y.square().mean().backward()
        outs.append(y.detach())
        grads.append(xi.grad)
    for y, g in zip(outs[1:], grads[1:]):
        torch.testing.assert_close(y, outs[0], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(g, grads[0], atol=1e-6, rtol=1e-4)


def test_attention_dropout_is_applied_in_training():
    m = AttnConv(32, 4, [2, 2], [5], window_size=2, attn_drop=0.5)
    x = torch.randn(1, 32, 8, 8)
    torch.manual_seed(0)
    y1 = m(x)
    torch.manual_seed(1)
    y2 = m(x)
    assert not torch.allclose(y1, y2)
    m.eval()
    torch.testing.assert_close(m(x), m(x))


def test_registered_and_builds():
    m = MODELS.build(dict(type='AttnConv', dim=32, num_heads=2, group_split=[1, 1], kernel_sizes=[3],
                          window_size=2))
    assert isinstance(m, AttnConv)
    assert m(torch.randn(1, 32, 6, 6)).shape == (1, 32, 6, 6)


@pytest.mark.parametrize('kwargs, match', [
    (dict(dim=30, num_heads=4, group_split=[2, 2], kernel_sizes=[3]), 'divisible by num_heads'),
    (dict(dim=32, num_heads=4, group_split=[1, 2], kernel_sizes=[3]), 'sum to num_heads'),
    (dict(dim=32, num_heads=4, group_split=[2, 2], kernel_sizes=[3, 5]), 'one entry per kernel size'),
    (dict(dim=32, num_heads=4, group_split=[2, 2], kernel_sizes=[4]), 'odd'),
    (dict(dim=32, num_heads=4, group_split=[2, -1, 3], kernel_sizes=[3, 5]), 'non-negative'),
    (dict(dim=32, num_heads=4, group_split=[2, 2], kernel_sizes=[3], window_size=0), 'window_size'),
    (dict(dim=32, num_heads=4, group_split=[2, 2], kernel_sizes=[3], attn_impl='flash'), "attn_impl='flash'"),
    (dict(dim=0, num_heads=4, group_split=[2, 2], kernel_sizes=[3]), 'dim must be'),
])
def test_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        AttnConv(**kwargs)


def test_bad_input_shape():
    m = AttnConv(32, 4, [2, 2], [3], window_size=2)
    with pytest.raises(ValueError, match=r'\(B, 32, H, W\)'):
        m(torch.randn(1, 16, 8, 8))
    with pytest.raises(ValueError, match='shape'):
        m(torch.randn(32, 8, 8))


def test_pooling_matches_authors_avgpool_at_multiples():
    """At multiples of the window the internal pooling is exactly nn.AvgPool2d (the authors' op)."""
    m = AttnConv(16, 2, [1, 1], [3], window_size=4)
    x = torch.randn(2, 16, 12, 8)
    torch.testing.assert_close(m._pool(x), F.avg_pool2d(x, 4, 4), atol=0, rtol=0)
