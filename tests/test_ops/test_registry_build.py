"""Every operator builds from the registry with the shared vocabulary (``embed_dims``, ``impl``); both
implementations give the same outputs on the same weights."""
import pytest
import torch

from mmsparse.ops.checks import IMPLS
from mmsparse.registry import MODELS

#: ``mmsparse.``-scoped as a config would write them: the internal blocks (GlobalAttentionLePE, TokenMHSA) are not
#: registered into mmdet's / mmseg's registries, so a plain name would not build under their default scope
OPERATORS = [
    dict(type='mmsparse.BiLevelRoutingAttention', num_heads=2, n_win=3, topk=2, auto_pad=True),
    dict(type='mmsparse.GlobalAttentionLePE', num_heads=4),
    dict(type='mmsparse.AttnConv', num_heads=4, group_split=[1, 1, 2], kernel_sizes=[3, 5], window_size=2),
    dict(type='mmsparse.SuperTokenAttention', num_heads=2, stoken_size=(3, 4), n_iter=2),
    dict(type='mmsparse.TokenMHSA', num_heads=4),
]


@pytest.mark.parametrize('scope', [None, 'mmdet', 'mmseg'])
@pytest.mark.parametrize('cfg', OPERATORS, ids=lambda c: c['type'])
def test_operator_builds_with_embed_dims_and_both_impls_agree(cfg, scope):
    from mmengine.registry import DefaultScope
    torch.manual_seed(0)
    with DefaultScope.overwrite_default_scope(scope):
        built = {impl: MODELS.build(dict(cfg, embed_dims=32, impl=impl)).eval() for impl in IMPLS}
    assert all(m.impl == impl and m.embed_dims == 32 for impl, m in built.items())
    built['fast'].load_state_dict(built['reference'].state_dict())
    x = torch.randn(2, 32, 11, 13)
    with torch.no_grad():
        ref, fast = built['reference'](x), built['fast'](x)
    assert ref.shape == x.shape
    torch.testing.assert_close(fast, ref, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize('cfg', OPERATORS, ids=lambda c: c['type'])
def test_operator_rejects_unknown_impl(cfg):
    with pytest.raises(ValueError, match=r"impl='triton' is not known; choose one of \['reference', 'fast'\]"):
        MODELS.build(dict(cfg, embed_dims=32, impl='triton'))
