"""SuperTokenAttention against the authors' StokenAttention fixtures, plus its behaviour at the edges."""
import pytest
import torch
import torch.nn.functional as F

from mmsparse.testing import model_from_official
from mmsparse.ops.checks import IMPLS
from mmsparse.ops.super_token_attention import SuperTokenAttention, TokenMHSA, neighbour_gather, neighbour_scatter
from tests.conftest import ATOL, assert_close_to_reference, assert_impls_agree, load_fixture, max_diff

FIXTURES = ['stvit_stoken_attention_d64_s4_iter1.pt', 'stvit_stoken_attention_d64_s4_iter2.pt']


@pytest.mark.parametrize('impl', IMPLS)
@pytest.mark.parametrize('name', FIXTURES)
def test_matches_official_stoken_attention(name, impl):
    fx = load_fixture(name)
    module = model_from_official('StokenAttention', fx['config'], fx['state_dict'])
    assert module.impl == module.refine.impl == 'reference'
    module.impl = impl
    assert module.refine.impl == impl  # one switch for sampling and refinement
    assert module.n_iter == fx['config']['n_iter']
    for x, ref in zip(fx['inputs'], fx['outputs']):  # the second input is padded 30x27 -> 32x28
        with torch.no_grad():
            out, extras = module.forward_with_intermediates(x)
        assert_close_to_reference(out, ref['output'], f'{name} output {tuple(x.shape)}')
        for key in ('stoken_refine_in', 'stoken_refine_out'):
            assert_close_to_reference(extras[key], ref[key], f'{name} {key} {tuple(x.shape)}')


def test_official_builder_rejects_unsupported_kwargs():
    with pytest.raises(ValueError, match='refine'):
        model_from_official('StokenAttention', dict(dim=32, refine=False))
    with pytest.raises(ValueError, match='unsupported constructor argument'):
        model_from_official('StokenAttention', dict(dim=32, window=3))


def test_neighbour_ops_are_the_eye_kernel_convolutions():
    """F.unfold / F.fold equal the authors' conv2d / conv_transpose2d with nine one-hot 3x3 kernels."""
    eye = torch.eye(9).view(9, 1, 3, 3)
    s = torch.randn(2, 5, 4, 6)
    official = F.conv2d(s.reshape(10, 1, 4, 6), eye, padding=1).reshape(2, 5 * 9, 24)
    ours = neighbour_gather(s)  # (B, M, C, 9)
    torch.testing.assert_close(ours, official.transpose(1, 2).reshape(2, 24, 5, 9), rtol=0, atol=0)
    t = torch.randn(2, 24, 5, 9)
    official = F.conv_transpose2d(t.permute(0, 2, 3, 1).reshape(10, 9, 4, 6), eye, padding=1).reshape(2, 5, 4, 6)
    torch.testing.assert_close(neighbour_scatter(t, (4, 6)), official)


@pytest.mark.parametrize('impl', IMPLS)
def test_global_when_stoken_size_is_one(impl):
    """stoken_size=1 is global self-attention over all pixels. Properties that only global attention without
    positional terms has: any permutation of the pixels permutes the output the same way, and every output
    pixel depends on the farthest input pixel. With super tokens of 2x2 the same permutation breaks the output."""
    x = torch.randn(1, 32, 7, 5)
    perm = torch.randperm(35, generator=torch.Generator().manual_seed(3))

    def permuted(t):
        return t.flatten(2)[:, :, perm].view_as(t)

    sta = SuperTokenAttention(32, 4, stoken_size=1, impl=impl).eval()
    assert sta.is_global
    with torch.no_grad():
        torch.testing.assert_close(sta(permuted(x)), permuted(sta(x)), rtol=1e-5, atol=1e-5)
        far = x.clone()
        far[:, :, -1, -1] += 5.
        assert (sta(far)[:, :, 0, 0] - sta(x)[:, :, 0, 0]).abs().max() > 1e-3
        local = SuperTokenAttention(32, 4, stoken_size=2, impl=impl).eval()
        assert max_diff(local(permuted(x)), permuted(local(x))) > 1e-3
    with pytest.raises(ValueError, match='global attention'):
        sta.association(x)


def test_sdpa_equals_explicit_attention():
    mhsa = TokenMHSA(48, 3).eval()
    x = torch.randn(2, 48, 6, 7)
    ref = mhsa(x)
    mhsa.impl = 'reference'
    torch.testing.assert_close(mhsa(x), ref, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize('size', [(16, 16), (13, 10), (3, 17)])
def test_association_and_assignment(size):
    sta = SuperTokenAttention(16, 2, stoken_size=(4, 5)).eval()
    x = torch.randn(2, 16, *size)
    assoc = sta.association(x)
    assert assoc.shape == (2, 9, *size)
    torch.testing.assert_close(assoc.sum(1), torch.ones(2, *size))  # an unmasked softmax over 9 neighbours
    label = sta.assignment(x)
    grid = -(-size[0] // 4) * -(-size[1] // 5)
    assert label.shape == (2, *size) and label.dtype == torch.long
    assert label.min() >= -1 and label.max() < grid


def test_no_gradient_through_the_association():
    """The authors compute A under no_grad: the gradient w.r.t. x only flows through the aggregation."""
    sta = SuperTokenAttention(8, 1, stoken_size=2)
    x = torch.randn(1, 8, 4, 4, requires_grad=True)
    out, extras = sta.forward_with_intermediates(x)
    assert not extras['association'].requires_grad
    out.sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()


@pytest.mark.parametrize('kwargs, match', [
    (dict(stoken_size=0), 'stoken_size'),
    (dict(stoken_size=(4, -1)), 'stoken_size'),
    (dict(stoken_size=(2, 2, 2)), 'stoken_size'),
    (dict(n_iter=0), 'n_iter'),
    (dict(num_heads=3), 'num_heads'),
    (dict(impl='cuda'), "impl='cuda'.*'reference', 'fast'"),
])
def test_bad_arguments(kwargs, match):
    args = dict(embed_dims=16, num_heads=2)
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        SuperTokenAttention(**args)


def test_bad_input_shape():
    with pytest.raises(ValueError, match=r'\(N, 16, H, W\)'):
        SuperTokenAttention(16, 2, 4)(torch.randn(1, 8, 8, 8))


# ------------------------------------------------------------------- fast vs reference implementation

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
    assert_impls_agree(layer, x)


def test_sta_fast_is_default_and_model_from_official_builds_the_reference():
    from mmsparse.models.backbones.stvit import STViT
    assert SuperTokenAttention(16, 2).impl == 'fast'
    tiny = dict(embed_dims=[16, 32, 64, 128], depths=[1, 1, 1, 1], num_heads=[1, 2, 4, 4])
    assert all(m.impl == 'fast' for m in STViT(arch=tiny).modules() if isinstance(m, SuperTokenAttention))
    fx = load_fixture('stvit_stoken_attention_d64_s4_iter2.pt')
    assert model_from_official('StokenAttention', fx['config'], fx['state_dict']).impl == 'reference'


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
