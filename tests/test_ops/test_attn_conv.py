"""AttnConv (CloFormer's EfficientAttention): golden parity, any-size semantics, implementations, bad arguments."""
import pytest
import torch
import torch.nn.functional as F

from mmsparse.testing import model_from_official
from mmsparse.ops import AttnConv
from mmsparse.ops.checks import IMPLS
from tests.conftest import assert_close_to_reference, assert_impls_agree, load_fixture

FIXTURE = 'cloformer_efficient_attention_d64.pt'


@pytest.mark.parametrize('impl', IMPLS)
def test_matches_official_fixture(impl):
    fx = load_fixture(FIXTURE)
    module = model_from_official(fx['official_class'], fx['config'], fx['state_dict'])
    assert isinstance(module, AttnConv) and not module.training
    module.impl = impl
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


@pytest.mark.parametrize('impl', IMPLS)
@pytest.mark.parametrize('size', [(16, 24), (13, 10), (5, 7), (3, 3), (1, 9)])
def test_any_size_global_keys_average_real_pixels(size, impl):
    m = AttnConv(32, 4, [1, 1, 2], [3, 5], window_size=4, impl=impl).eval()
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


def test_attention_dropout_only_in_training():
    torch.manual_seed(0)
    m = AttnConv(32, 4, [2, 2], [5], window_size=2, attn_drop=0.5)
    plain = AttnConv(32, 4, [2, 2], [5], window_size=2)
    plain.load_state_dict(m.state_dict())
    x = torch.randn(1, 32, 8, 8)
    torch.manual_seed(0)
    y1 = m(x)
    torch.manual_seed(1)
    y2 = m(x)
    assert not torch.allclose(y1, y2)  # different dropout masks in training
    m.eval(), plain.eval()
    with torch.no_grad():
        torch.testing.assert_close(m(x), plain(x))  # evaluation ignores attn_drop


@pytest.mark.parametrize('kwargs, match', [
    (dict(embed_dims=30, num_heads=4, group_split=[2, 2], kernel_sizes=[3]), 'divisible by num_heads'),
    (dict(embed_dims=32, num_heads=4, group_split=[1, 2], kernel_sizes=[3]), 'sum to num_heads'),
    (dict(embed_dims=32, num_heads=4, group_split=[2, 2], kernel_sizes=[3, 5]), 'one entry per kernel size'),
    (dict(embed_dims=32, num_heads=4, group_split=[2, 2], kernel_sizes=[4]), 'odd'),
    (dict(embed_dims=32, num_heads=4, group_split=[2, -1, 3], kernel_sizes=[3, 5]), 'non-negative'),
    (dict(embed_dims=32, num_heads=4, group_split=[2, 2], kernel_sizes=[3], window_size=0), 'window_size'),
    (dict(embed_dims=32, num_heads=4, group_split=[2, 2], kernel_sizes=[3], impl='flash'), "impl='flash'.*'reference', 'fast'"),  # noqa: E501
    (dict(embed_dims=0, num_heads=4, group_split=[2, 2], kernel_sizes=[3]), 'embed_dims must be'),
])
def test_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        AttnConv(**kwargs)


def test_bad_input_shape():
    m = AttnConv(32, 4, [2, 2], [3], window_size=2)
    with pytest.raises(ValueError, match=r'\(N, 32, H, W\)'):
        m(torch.randn(1, 16, 8, 8))
    with pytest.raises(ValueError, match='shape'):
        m(torch.randn(32, 8, 8))


def test_pooling_matches_authors_avgpool_at_multiples():
    """At multiples of the window the internal pooling is exactly nn.AvgPool2d (the authors' op)."""
    m = AttnConv(16, 2, [1, 1], [3], window_size=4)
    x = torch.randn(2, 16, 12, 8)
    torch.testing.assert_close(m._pool(x), F.avg_pool2d(x, 4, 4), atol=0, rtol=0)


# ------------------------------------------------------------------- fast vs reference implementation

@pytest.mark.parametrize('kwargs, size', [
    (dict(embed_dims=32, num_heads=4, group_split=[3, 1], kernel_sizes=[3], window_size=8), (16, 16)),
    (dict(embed_dims=48, num_heads=6, group_split=[2, 1, 3], kernel_sizes=[3, 7], window_size=3), (13, 10)),  # noqa: E501 (partial windows)
    (dict(embed_dims=32, num_heads=4, group_split=[4, 0], kernel_sizes=[5], window_size=2), (9, 7)),  # noqa: E501 (no global group)
    (dict(embed_dims=32, num_heads=4, group_split=[0, 4], kernel_sizes=[5], window_size=2), (9, 7)),     # global only
    (dict(embed_dims=32, num_heads=2, group_split=[1, 1], kernel_sizes=[3], window_size=1, qkv_bias=False), (5, 11)),
])
def test_attn_conv_impls_agree_with_gradients(kwargs, size):
    torch.manual_seed(sum(size))
    module = AttnConv(**kwargs)
    assert module.impl == 'fast'
    x = torch.randn(2, kwargs['embed_dims'], *size)
    assert_impls_agree(module, x)
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
