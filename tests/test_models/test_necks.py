"""SparseAttnFPN (equals FPN without attention, identity at init, shapes, positions, errors) and
MultiLevelSparseAttn."""
import pytest
import torch
from mmengine.registry import DefaultScope

import mmsparse  # noqa: F401
from mmsparse.models.necks import MultiLevelSparseAttn, SparseAttnFPN
from mmsparse.models.plugins import SparseAttnBlock

IN_CHANNELS = [8, 16, 32, 64]
ATTN = {
    'bra': dict(type='BiLevelRoutingAttention', num_heads=2, n_win=3, topk=2),
    'attnconv': dict(type='AttnConv', num_heads=2, group_split=[1, 1], kernel_sizes=[3], window_size=2),
    'sta': dict(type='SuperTokenAttention', num_heads=2, stoken_size=2),
}


def _inputs(h=61, w=45, batch=2):
    """Pyramid of odd sizes, each level the ceil-half of the previous (like a strided backbone)."""
    feats = []
    for c in IN_CHANNELS:
        feats.append(torch.randn(batch, c, h, w))
        h, w = (h + 1) // 2, (w + 1) // 2
    return feats


def _switch_on(neck, value=0.5):
    with torch.no_grad():
        for block in neck.attn_blocks.values():
            block.gamma1.gamma.fill_(value)


FPN_VARIANTS = {
    'retinanet': dict(start_level=1, add_extra_convs='on_input', num_outs=5),
    'maskrcnn': dict(num_outs=5),
    'lateral_relu': dict(add_extra_convs='on_lateral', relu_before_extra_convs=True, num_outs=6),
    'output_bool': dict(add_extra_convs=True, num_outs=5),
    'on_output': dict(add_extra_convs='on_output', num_outs=5),
    'end_level': dict(start_level=1, end_level=2, num_outs=2),
    'bn_relu_bilinear': dict(num_outs=4, norm_cfg=dict(type='BN'), act_cfg=dict(type='ReLU'),
                             no_norm_on_lateral=True, upsample_cfg=dict(mode='bilinear', align_corners=False)),
    'scale_factor': dict(num_outs=4, upsample_cfg=dict(scale_factor=2, mode='nearest')),
}


@pytest.mark.parametrize('variant', FPN_VARIANTS)
def test_equals_mmdet_fpn_without_attention(variant):
    from mmdet.models.necks import FPN
    kw = FPN_VARIANTS[variant]
    ref = FPN(IN_CHANNELS, 16, **kw)
    ref.init_weights()
    ours = SparseAttnFPN(IN_CHANNELS, 16, **kw)
    ours.load_state_dict(ref.state_dict(), strict=True)  # same module names and shapes
    ref.eval()
    ours.eval()
    # 'scale_factor' upsampling needs exact halving, the others take odd sizes
    feats = _inputs(64, 48) if variant == 'scale_factor' else _inputs()
    with torch.no_grad():
        expected, got = ref(feats), ours(feats)
    assert len(got) == len(expected) == kw['num_outs']
    for a, b in zip(expected, got):
        assert torch.equal(a, b)


def test_equals_mmseg_fpn_without_attention():
    from mmseg.models.necks import FPN
    ref = FPN(IN_CHANNELS, 16, num_outs=4)
    ref.init_weights()
    ours = SparseAttnFPN(IN_CHANNELS, 16, num_outs=4)
    ours.load_state_dict(ref.state_dict(), strict=True)
    feats = _inputs()
    with torch.no_grad():
        for a, b in zip(ref(feats), ours(feats)):
            assert torch.equal(a, b)


@pytest.mark.parametrize('kind', ATTN)
@pytest.mark.parametrize('position', ['lateral', 'output'])
def test_identity_at_init_then_changes_expected_levels(kind, position):
    from mmdet.models.necks import FPN
    kw = dict(start_level=1, add_extra_convs='on_output', num_outs=5)
    ref = FPN(IN_CHANNELS, 16, **kw)
    ref.init_weights()
    neck = SparseAttnFPN(IN_CHANNELS, 16, attn_levels=(1, ), attn_cfg=ATTN[kind], attn_position=position,
                         block_cfg=dict(ffn_ratio=1.), **kw)
    neck.init_weights()  # FPN's Xavier runs over the attention convs; the layer scales stay 0
    assert torch.count_nonzero(neck.attn_blocks['1'].gamma1.gamma) == 0
    missing, unexpected = neck.load_state_dict(ref.state_dict(), strict=False)
    assert not unexpected and all(k.startswith('attn_blocks.1.') for k in missing)
    feats = _inputs()
    with torch.no_grad():
        expected = ref(feats)
        for a, b in zip(expected, neck(feats)):
            assert torch.equal(a, b)
        _switch_on(neck)
        changed = [not torch.equal(a, b) for a, b in zip(expected, neck(feats))]
    # outputs: 0 (stride 8), 1 (attended, stride 16), 2 (stride 32), 3-4 extra convs on output 2
    if position == 'lateral':
        assert changed == [True, True, False, False, False]  # the top-down path carries it to finer levels
    else:
        assert changed == [False, True, False, False, False]


@pytest.mark.parametrize('kind', ATTN)
def test_output_shapes_with_attention(kind):
    neck = SparseAttnFPN(IN_CHANNELS, 24, num_outs=5, add_extra_convs='on_input', attn_levels=(0, 2, 3),
                         attn_cfg=ATTN[kind])
    _switch_on(neck)
    feats = _inputs(37, 53)
    outs = neck(feats)
    sizes = [tuple(f.shape[2:]) for f in feats] + [(3, 4)]  # 37x53 ... 5x7, then a stride-2 conv: 3x4
    assert [tuple(o.shape) for o in outs] == [(2, 24) + s for s in sizes]
    assert all(torch.isfinite(o).all() for o in outs)


def test_per_level_attn_cfg_and_block_cfg():
    neck = SparseAttnFPN(IN_CHANNELS, 16, num_outs=4, attn_levels=[0, 3],
                         attn_cfg=[dict(type='SuperTokenAttention', num_heads=2, stoken_size=4),
                                   dict(type='SuperTokenAttention', num_heads=2, stoken_size=1)],
                         block_cfg=dict(embed_dims=8, ffn_ratio=2.))
    assert neck.attn_blocks['0'].attn.stoken_size == (4, 4) and neck.attn_blocks['3'].attn.is_global
    assert neck.attn_blocks['3'].embed_dims == 8 and neck.attn_blocks['3'].ffn is not None
    assert set(neck.attn_blocks) == {'0', '3'}


def test_errors_are_clear():
    with pytest.raises(ValueError, match=r'attn_levels must be distinct ints in \[0, 2\]'):
        SparseAttnFPN(IN_CHANNELS, 16, num_outs=5, start_level=1, attn_levels=(3, ), attn_cfg=ATTN['sta'])
    with pytest.raises(ValueError, match='distinct'):
        SparseAttnFPN(IN_CHANNELS, 16, num_outs=4, attn_levels=(1, 1), attn_cfg=ATTN['sta'])
    with pytest.raises(ValueError, match='needs attn_cfg'):
        SparseAttnFPN(IN_CHANNELS, 16, num_outs=4, attn_levels=(1, ))
    with pytest.raises(ValueError, match='one dict per attn_levels entry'):
        SparseAttnFPN(IN_CHANNELS, 16, num_outs=4, attn_levels=(1, 2), attn_cfg=[ATTN['sta']])
    with pytest.raises(ValueError, match='accepted types are'):
        SparseAttnFPN(IN_CHANNELS, 16, num_outs=4, attn_levels=(1, ), attn_cfg=dict(type='NonLocal2d'))
    with pytest.raises(ValueError, match="attn_position must be one of \\('lateral', 'output'\\)"):
        SparseAttnFPN(IN_CHANNELS, 16, num_outs=4, attn_position='input')
    with pytest.raises(ValueError, match='add_extra_convs must be a bool or one of'):
        SparseAttnFPN(IN_CHANNELS, 16, num_outs=5, add_extra_convs='on_pool')
    with pytest.raises(ValueError, match='num_outs=2 must be >= the 4'):
        SparseAttnFPN(IN_CHANNELS, 16, num_outs=2)
    with pytest.raises(ValueError, match='must not set .in_channels.'):
        SparseAttnFPN(IN_CHANNELS, 16, num_outs=4, attn_levels=(1, ), attn_cfg=ATTN['sta'],
                      block_cfg=dict(in_channels=16))
    neck = SparseAttnFPN(IN_CHANNELS, 16, num_outs=4)
    with pytest.raises(ValueError, match='expects 4 input levels, got 3'):
        neck(_inputs()[:3])


@pytest.mark.parametrize('scope', ['mmdet', 'mmseg'])
def test_builds_from_downstream_registries(scope):
    registry = __import__(f'{scope}.registry', fromlist=['MODELS']).MODELS
    with DefaultScope.overwrite_default_scope(scope):
        neck = registry.build(dict(type='SparseAttnFPN', in_channels=IN_CHANNELS, out_channels=16, num_outs=4,
                                   attn_levels=3, attn_cfg=ATTN['bra']))
        both = registry.build([dict(type='MultiLevelSparseAttn', in_channels=IN_CHANNELS, attn_levels=[3],
                                    attn_cfg=ATTN['attnconv']),
                               dict(type='FPN', in_channels=IN_CHANNELS, out_channels=16, num_outs=4)])
    assert isinstance(neck, SparseAttnFPN) and isinstance(neck.attn_blocks['3'], SparseAttnBlock)
    assert isinstance(both, torch.nn.Sequential) and isinstance(both[0], MultiLevelSparseAttn)
    outs = both(tuple(_inputs()))
    assert [o.shape[1] for o in outs] == [16] * 4


def test_multi_level_attention_passes_other_levels_through():
    mod = MultiLevelSparseAttn(IN_CHANNELS, attn_levels=(1, 3), attn_cfg=ATTN['bra'])
    mod.init_weights()
    feats = _inputs()
    outs = mod(feats)
    assert outs[0] is feats[0] and outs[2] is feats[2]
    assert all(torch.equal(a, b) for a, b in zip(outs, feats))  # identity at init
    _switch_on(mod)
    outs = mod(feats)
    assert [o.shape for o in outs] == [f.shape for f in feats]
    assert not torch.equal(outs[1], feats[1]) and not torch.equal(outs[3], feats[3])
    with pytest.raises(ValueError, match='expects 4 levels'):
        mod(feats[:2])
    with pytest.raises(ValueError, match=r'attn_levels must be distinct ints in \[0, 3\]'):
        MultiLevelSparseAttn(IN_CHANNELS, attn_levels=(4, ), attn_cfg=ATTN['bra'])
