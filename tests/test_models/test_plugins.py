"""SparseAttnBlock: identity at init (alone and as a ResNet plugin), training signal, sizes, errors, registries;
the configs of configs/plugins (build, and one train/test step on the synthetic data)."""
import copy

import pytest
import torch
from mmengine.registry import DefaultScope

import mmsparse  # noqa: F401  (registers everything)
from mmsparse.families import plugin_operators
from mmsparse.models.plugins import SparseAttnBlock
from tests.conftest import REPO
from mmsparse.ops import AttnConv, BiLevelRoutingAttention, SuperTokenAttention

#: every plug-in operator of every registered family, by its short name
PLUGINS = {op.short: op for op in plugin_operators().values()}
#: the settings each plug-in operator is tested with (smaller than its ``plugin_defaults``, and chosen per operator:
#: e.g. a super-token size that divides none of the sizes below). Keyed by the short name and checked to cover
#: exactly ``PLUGINS`` (``test_attn_table_covers_every_plugin_operator``): a new family's plug-in fails the tests
#: below until it has its entry here, instead of going untested.
ATTN = {
    'bra': dict(type='BiLevelRoutingAttention', num_heads=4, n_win=4, topk=4),
    'attnconv': dict(type='AttnConv', num_heads=4, group_split=[2, 2], kernel_sizes=[5], window_size=2),
    'sta': dict(type='SuperTokenAttention', num_heads=4, stoken_size=3),
}
KINDS = sorted(PLUGINS)
OP_CLASS = {kind: op.cls for kind, op in PLUGINS.items()}


def test_attn_table_covers_every_plugin_operator():
    assert set(ATTN) == set(PLUGINS)
    assert {kind: cfg['type'] for kind, cfg in ATTN.items()} == {kind: op.name for kind, op in PLUGINS.items()}
    assert {'bra': BiLevelRoutingAttention, 'attnconv': AttnConv, 'sta': SuperTokenAttention}.items() <= \
        OP_CLASS.items()


def _scope(name):
    """Context with ``name`` as the default scope (None: leave the current one, if any)."""
    return DefaultScope.overwrite_default_scope(name)


@pytest.mark.parametrize('kind', KINDS)
@pytest.mark.parametrize('ffn_ratio', [0., 2.])
def test_block_is_identity_at_init(kind, ffn_ratio):
    block = SparseAttnBlock(32, ATTN[kind], ffn_ratio=ffn_ratio)
    block.init_weights()
    assert isinstance(block.attn, OP_CLASS[kind])
    x = torch.randn(2, 32, 13, 19)
    assert torch.equal(block(x), x)
    assert torch.count_nonzero(block.gamma1.gamma) == 0
    assert (block.ffn is None) == (ffn_ratio == 0)


@pytest.mark.parametrize('kind', KINDS)
@pytest.mark.parametrize('size', [(1, 1), (5, 7), (13, 19), (16, 16)])
def test_block_any_size_once_trained(kind, size):
    block = SparseAttnBlock(32, ATTN[kind], ffn_ratio=1.)
    with torch.no_grad():  # a trained block: residual branches switched on
        block.gamma1.gamma.fill_(0.5)
        block.gamma2.gamma.fill_(0.5)
    x = torch.randn(2, 32, *size)
    out = block(x)
    assert out.shape == x.shape and torch.isfinite(out).all()
    assert not torch.allclose(out, x)


@pytest.mark.parametrize('kind', KINDS)
def test_block_computes_its_documented_formula(kind):
    """``x + g1 * proj_out(attn(proj_in(norm1(x))))``, then ``+ g2 * ffn(norm2(.))``, recomputed by hand on a
    hand-set block: channel LayerNorm, 1x1 convs and the FFN written with torch.functional, the operator called on
    its own. Hand-set per-channel scales and norm affines, an input whose channels have unequal means and scales
    (so a missing norm shows), and reduced operator width (so ``proj_in`` / ``proj_out`` are exercised).

    Catches: removing both pre-norms from ``SparseAttnBlock.forward`` (``self.attn(self.proj_in(x))``,
    ``self.ffn(x)``), which every other plug-in test passes."""
    torch.manual_seed(0)
    c, e, hidden = 8, 4, 8
    attn_cfg = dict(ATTN[kind], num_heads=2)
    if kind == 'attnconv':
        attn_cfg['group_split'] = [1, 1]
    block = SparseAttnBlock(c, attn_cfg, embed_dims=e, ffn_ratio=hidden / c).eval()
    with torch.no_grad():
        block.gamma1.gamma.copy_(torch.linspace(-1., 1.5, c).view(c, 1, 1))
        block.gamma2.gamma.copy_(torch.linspace(2., -0.5, c).view(c, 1, 1))
        for norm in (block.norm1, block.norm2):
            norm.weight.copy_(torch.rand(c) + 0.5)
            norm.bias.copy_(torch.randn(c))
    x = torch.randn(2, c, 9, 11) * torch.linspace(0.5, 4., c).view(1, c, 1, 1) + torch.arange(c).view(1, c, 1, 1)

    def layer_norm(t, norm):  # over channels, biased variance, eps inside the root
        mean = t.mean(1, keepdim=True)
        var = ((t - mean) ** 2).mean(1, keepdim=True)
        return (t - mean) / torch.sqrt(var + 1e-6) * norm.weight.view(1, c, 1, 1) + norm.bias.view(1, c, 1, 1)

    def conv1x1(t, conv):
        return torch.einsum('oi,bihw->bohw', conv.weight[:, :, 0, 0], t) + conv.bias.view(1, -1, 1, 1)

    ffn = block.ffn
    with torch.no_grad():
        branch1 = conv1x1(block.attn(conv1x1(layer_norm(x, block.norm1), block.proj_in)), block.proj_out)
        y = x + block.gamma1.gamma * branch1
        hid = torch.nn.functional.conv2d(conv1x1(layer_norm(y, block.norm2), ffn.fc1), ffn.dwconv.weight,
                                         ffn.dwconv.bias, padding=1, groups=hidden)
        expected = y + block.gamma2.gamma * conv1x1(torch.nn.functional.gelu(hid), ffn.fc2)
        out = block(x)
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-4)
    assert (expected - y).abs().max() > 1e-2 and (y - x).abs().max() > 1e-2  # both branches contribute


def test_block_reduced_embed_dims():
    block = SparseAttnBlock(64, ATTN['sta'], embed_dims=32)
    assert block.proj_in.weight.shape == (32, 64, 1, 1) and block.proj_out.weight.shape == (64, 32, 1, 1)
    assert block.attn.embed_dims == 32
    x = torch.randn(1, 64, 9, 11)
    assert torch.equal(block(x), x)


@pytest.mark.parametrize('kind', KINDS)
def test_gradients_reach_attention_after_one_step(kind):
    torch.manual_seed(0)
    block = SparseAttnBlock(32, ATTN[kind], ffn_ratio=2.)
    block.init_weights()
    opt = torch.optim.SGD(block.parameters(), lr=0.1)
    x, target = torch.randn(2, 32, 11, 13), torch.randn(2, 32, 11, 13)

    def step():
        opt.zero_grad()
        ((block(x) - target) ** 2).mean().backward()

    step()
    # at init only the zero layer scales receive a gradient; the branches behind them see exactly 0
    assert block.gamma1.gamma.grad.abs().sum() > 0 and block.gamma2.gamma.grad.abs().sum() > 0
    for name, p in block.attn.named_parameters():
        assert p.grad is None or torch.count_nonzero(p.grad) == 0, name
    opt.step()
    assert torch.count_nonzero(block.gamma1.gamma) > 0
    step()
    grads = {name: p.grad for name, p in block.attn.named_parameters()}
    nonzero = [name for name, g in grads.items() if g is not None and g.abs().sum() > 0]
    # the output projection and the projections feeding the attention all learn now
    assert any('proj' in n for n in nonzero), nonzero
    assert len(nonzero) >= len(grads) // 2, (nonzero, list(grads))
    assert block.ffn.fc1.weight.grad.abs().sum() > 0


def test_bad_attn_cfg_names_accepted_types():
    assert {'AttnConv', 'BiLevelRoutingAttention', 'SuperTokenAttention'} <= set(plugin_operators())
    accepted = str(sorted(plugin_operators()))
    with pytest.raises(ValueError, match='accepted types are') as err:
        SparseAttnBlock(32, dict(type='SwinAttention'))
    assert accepted in str(err.value) and 'SwinAttention' in str(err.value)
    with pytest.raises(TypeError, match='attn_cfg must be a dict'):
        SparseAttnBlock(32, 'BiLevelRoutingAttention')
    with pytest.raises(TypeError, match='attn_cfg must be a dict'):
        SparseAttnBlock(32, dict(num_heads=4))
    with pytest.raises(ValueError, match='embed_dims=16 does not match the block channels 32'):
        SparseAttnBlock(32, dict(type='AttnConv', embed_dims=16))
    # the operator's own checks still speak
    with pytest.raises(ValueError, match='group_split'):
        SparseAttnBlock(32, dict(type='AttnConv', num_heads=4, group_split=[1, 1], kernel_sizes=[3]))


def test_bad_block_args():
    with pytest.raises(ValueError, match='in_channels must be a positive int'):
        SparseAttnBlock(0, ATTN['bra'])
    with pytest.raises(ValueError, match='ffn_ratio'):
        SparseAttnBlock(32, ATTN['bra'], ffn_ratio=-1)
    with pytest.raises(ValueError, match='drop_path_rate'):
        SparseAttnBlock(32, ATTN['bra'], drop_path_rate=1.5)
    block = SparseAttnBlock(32, ATTN['bra'])
    with pytest.raises(ValueError, match=r'expects an NCHW tensor \(N, 32, H, W\)'):
        block(torch.randn(1, 16, 8, 8))


def test_scope_prefix_and_inherited_scope_key_accepted():
    block = SparseAttnBlock(32, dict(type='mmsparse.SuperTokenAttention', _scope_='mmdet', num_heads=4))
    assert isinstance(block.attn, SuperTokenAttention) and block.attn.stoken_size == (4, 4)


def test_layer_scale_survives_parent_init():
    """ResNet's Kaiming init re-initialises every Conv2d; the block must keep its layer-scale value."""
    block = SparseAttnBlock(32, ATTN['attnconv'], ffn_ratio=1., layer_scale_init_value=1e-2)
    with torch.no_grad():
        block.gamma1.gamma.fill_(3.)
    block.init_weights()
    assert torch.all(block.gamma1.gamma == 1e-2) and torch.all(block.gamma2.gamma == 1e-2)


@pytest.mark.parametrize('scope', [None, 'mmdet', 'mmseg'])
def test_mmcv_plugin_builder_finds_block(scope):
    from mmcv.cnn import build_plugin_layer
    with _scope(scope):
        name, layer = build_plugin_layer(dict(type='SparseAttnBlock', attn_cfg=ATTN['bra']), postfix='_1',
                                         in_channels=64)
    assert name == 'sparse_attn_1' and isinstance(layer, SparseAttnBlock) and layer.in_channels == 64


def test_block_in_root_and_downstream_registries():
    from mmdet.registry import MODELS as DET
    from mmengine.registry import MODELS as ROOT
    from mmseg.registry import MODELS as SEG

    from mmsparse.registry import MODELS
    for registry in (ROOT, DET, SEG, MODELS):
        assert registry.get('SparseAttnBlock') is SparseAttnBlock


def _resnet(scope, plugins=None):
    if scope == 'mmseg':
        from mmseg.models.backbones import ResNetV1c as ResNet
    else:
        from mmdet.models.backbones import ResNet
    # base_channels 16: a 4x thinner R-50 (same block structure), fast on CPU. zero_init_residual=False: a
    # pretrained ResNet's last BN is not zero (with mmdet's default True no gradient reaches a plugin at init)
    return ResNet(depth=50, base_channels=16, out_indices=(0, 1, 2, 3), plugins=plugins, zero_init_residual=False)


def _plugins(kind, stages=(False, False, True, True), position='after_conv2'):
    return [dict(cfg=dict(type='SparseAttnBlock', attn_cfg=ATTN[kind], ffn_ratio=1.), stages=stages,
                 position=position)]


@pytest.mark.parametrize('kind', KINDS)
@pytest.mark.parametrize('scope,position', [('mmdet', 'after_conv2'), ('mmdet', 'after_conv3'),
                                            ('mmseg', 'after_conv2')])
def test_plugged_resnet_equals_plain_resnet_at_init(kind, scope, position):
    with _scope(scope):
        plain = _resnet(scope)
        plugged = _resnet(scope, _plugins(kind, position=position))
    plain.init_weights()
    plugged.init_weights()  # ResNet's Kaiming/Constant inits run over the plugins too
    missing, unexpected = plugged.load_state_dict(plain.state_dict(), strict=False)
    assert not unexpected and missing and all('sparse_attn' in k for k in missing)
    blocks = [m for m in plugged.modules() if isinstance(m, SparseAttnBlock)]
    assert len(blocks) == 6 + 3  # every bottleneck of stages 3 and 4 of a ResNet-50
    assert all(torch.count_nonzero(b.gamma1.gamma) == 0 for b in blocks)
    plain.eval()
    plugged.eval()
    x = torch.randn(1, 3, 97, 71)  # odd: stage maps 25x18, 13x9, 7x5, 4x3
    with torch.no_grad():
        for a, b in zip(plain(x), plugged(x)):
            assert torch.equal(a, b)


def test_plugged_resnet_learns_attention():
    """In a plugged ResNet the zero scales get a gradient first, then (after one step) the attention."""
    with _scope('mmdet'):
        model = _resnet('mmdet', _plugins('bra', stages=(False, False, False, True)))
    model.init_weights()
    model.train()
    # a step on the plugins only: the thin random ResNet's loss is large enough to blow up a full step
    opt = torch.optim.SGD([p for n, p in model.named_parameters() if 'sparse_attn' in n], lr=1e-3)
    x = torch.randn(2, 3, 64, 64)
    block = model.layer4[0].sparse_attn

    def step():
        opt.zero_grad()
        model(x)[-1].pow(2).mean().backward()

    step()
    assert block.gamma1.gamma.grad.abs().sum() > 0
    assert torch.count_nonzero(block.attn.qkv.weight.grad) == 0
    opt.step()
    step()
    for grad in (block.attn.qkv.weight.grad, block.attn.proj.weight.grad):
        assert torch.isfinite(grad).all() and grad.abs().sum() > 0


# ----------------------------------------------------------------------------------------------- configs
CONFIG_DIR = REPO / 'configs' / 'plugins'
CONFIGS = sorted(CONFIG_DIR.glob('*.py'))
#: config -> (operator class, number of SparseAttnBlocks in the built model, where they are)
EXPECTED = {
    'retinanet_r50-bra-c4-c5_fpn_1x_coco': (BiLevelRoutingAttention, 9, 'backbone'),
    'retinanet_r50-attnconv-c4-c5_fpn_1x_coco': (AttnConv, 9, 'backbone'),
    'retinanet_r50-sta-c4-c5_fpn_1x_coco': (SuperTokenAttention, 9, 'backbone'),
    'mask-rcnn_r50_attnconv-fpn_1x_coco': (AttnConv, 2, 'neck'),
    'upernet_r50_sta-fpn_4xb4-160k_ade20k-512x512': (SuperTokenAttention, 2, 'neck'),
    'rtmdet_tiny_bra-neck_8xb32-300e_coco': (BiLevelRoutingAttention, 1, 'neck'),
}


def _load_config(path):
    from mmengine.config import Config
    from mmengine.registry import init_default_scope
    cfg = Config.fromfile(str(path))
    init_default_scope(cfg.default_scope)
    return cfg


def _build_model(cfg):
    """Build ``cfg.model`` without its pretrained weights (torchvision / downloads are unavailable here)."""
    model_cfg = copy.deepcopy(cfg.model)
    if model_cfg.get('pretrained'):
        model_cfg.pretrained = None
    if (model_cfg.backbone.get('init_cfg') or {}).get('type') == 'Pretrained':
        model_cfg.backbone.init_cfg = None
    registry = __import__(f'{cfg.default_scope}.registry', fromlist=['MODELS']).MODELS
    return registry.build(model_cfg)


def test_all_plugin_configs_present():
    assert {p.stem for p in CONFIGS} == set(EXPECTED)


@pytest.mark.parametrize('path', CONFIGS, ids=lambda p: p.stem)
def test_plugin_config_builds(path):
    cfg = _load_config(path)
    model = _build_model(cfg)
    assert cfg.custom_imports == dict(imports=['mmsparse'], allow_failed_imports=False)
    op_cls, count, where = EXPECTED[path.stem]
    blocks = [m for m in getattr(model, where).modules() if isinstance(m, SparseAttnBlock)]
    assert len(blocks) == count and all(isinstance(b.attn, op_cls) for b in blocks)
    assert sum(isinstance(m, SparseAttnBlock) for m in model.modules()) == count
    # the stock pretrained-weight settings stay for real machines (the smoke run drops them)
    if cfg.default_scope == 'mmseg':
        assert cfg.model.pretrained == 'open-mmlab://resnet50_v1c'
    else:
        assert cfg.model.backbone.init_cfg.type == 'Pretrained'
    model.init_weights()
    assert all(torch.count_nonzero(b.gamma1.gamma) == 0 for b in blocks)  # identity at init in the whole model


@pytest.mark.slow
@pytest.mark.parametrize('path', CONFIGS, ids=lambda p: p.stem)
def test_plugin_config_smoke_train_and_test(path, tmp_path):
    """One training step and one test batch of every plug-in config; every config, RTMDet's included, reports
    its task's metrics.

    Catches: a neck whose inference output is not finite (``MultiLevelSparseAttn.forward`` returning NaN maps in
    eval mode): RTMDet then keeps no box and mmdet reports ``{}``, which this test accepted before."""
    from mmengine.runner import Runner

    from tests import conftest as smoke
    cfg = smoke.smoke_config(str(path), str(tmp_path), smoke.ensure_synthetic_data())
    assert cfg.model.get('pretrained') is None and not (cfg.model.backbone.get('init_cfg') or {}).get('checkpoint')
    if path.stem.startswith('rtmdet'):
        # after one warm-up step (lr 4e-8 x 0.004) RTMDet's ReLU distance head still predicts zero-size boxes, which
        # min_bbox_size=0 drops (w > 0 fails), so mmdet would return {}; keeping them lets COCO metrics be computed
        cfg.model.test_cfg.min_bbox_size = -1
    runner = Runner.from_cfg(cfg)
    runner.train()
    metrics = runner.test()
    smoke.check_metrics(cfg, metrics)
    if EXPECTED[path.stem][2] == 'neck':
        # the neck's layer scales left zero after one step: the training signal reaches the attention.
        # (Backbone plugins get none here: without the dropped pretrained weights mmdet's ResNet zero-inits
        # every bottleneck's last BN, which blocks the gradient to an after_conv2 plugin.)
        model = runner.model
        blocks = [m for m in model.modules() if isinstance(m, SparseAttnBlock)]
        assert all(torch.count_nonzero(b.gamma1.gamma) > 0 for b in blocks)
