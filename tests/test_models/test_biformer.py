"""BiFormer backbone: parity with the authors' code, checkpoint conversion, options, errors."""
import pytest
import torch
from torch.nn.modules.batchnorm import _BatchNorm

from mmsparse.models.backbones import BiFormer
from mmsparse.models.backbones.biformer import BiFormerBlock
from mmsparse.testing import model_from_official
from mmsparse.ops.routing_attention import BiLevelRoutingAttention
from mmsparse.registry import MODELS
from tests.conftest import BIFORMER_REDUCED as REDUCED
from tests.conftest import num_elements as count
from tests.conftest import (REPO, assert_close_to_reference, assert_same_outputs_and_grads, assert_same_routing,
                            load_fixture, padded_regions)


def run_with_routing(model, x):
    """Forward ``x`` and return (outputs, routing indices of every BRA call in execution order)."""
    bras = [m for m in model.modules() if isinstance(m, BiLevelRoutingAttention)]  # module order = call order
    for m in bras:
        m.record_routing = True
    with torch.no_grad():
        outs = model(x)
    return outs, [m.routing_idx for m in bras]


def check_fixture(model, fx, out_key):
    n_win = fx['config']['n_win']
    for i, (x, ref) in enumerate(zip(fx['inputs'], fx['outputs'])):
        with torch.no_grad():
            assert_close_to_reference(model.stem(x), ref['stem'], f'input {i} stem')
        outs, routing = run_with_routing(model, x)
        assert len(outs) == 4
        for s, (ours, theirs) in enumerate(zip(outs, ref[out_key])):
            assert_close_to_reference(ours, theirs, f'input {i} {out_key}[{s}]')
        assert len(routing) == len(ref['routing_topk_idx'])
        # BRA calls: stage 0, 1, 2, 2 for depths [1, 1, 2, 1]; the map of stage s is ceil(H / 4 / 2**s)
        stage_of_call = [s for s, d in enumerate(fx['config']['depth'][:3]) for _ in range(d)]
        for c, (ours, theirs) in enumerate(zip(routing, ref['routing_topk_idx'])):
            s = stage_of_call[c]
            h, w = outs[s].shape[-2:]
            assert_same_routing(ours, theirs, padded_regions(h, w, n_win), f'input {i} BRA call {c}')


def test_classification_fixture_raw_stages():
    fx = load_fixture('biformer_reduced_cls_autopad.pt')
    model = model_from_official('BiFormer', fx['config'], fx['state_dict'])
    assert isinstance(model, BiFormer) and not any(hasattr(model, f'norm{i}') for i in range(4))
    check_fixture(model, fx, 'stages')


def test_dense_fixture_normalised_outputs():
    fx = load_fixture('biformer_mm_reduced_autopad.pt')
    model = model_from_official('BiFormer_mm', fx['config'], fx['state_dict'])
    assert model.norm_eval  # BiFormer_mm's default
    check_fixture(model, fx, 'dense_outs')
    # the raw (un-normalised) trunk is what feeds the next stage
    trunk = {k: v for k, v in fx['state_dict'].items() if not k.startswith('extra_norms.')}
    raw = model_from_official('BiFormer', fx['config'], trunk)
    with torch.no_grad():
        stages = raw(fx['inputs'][1])
    for s, (ours, theirs) in enumerate(zip(stages, fx['outputs'][1]['stages'])):
        assert_close_to_reference(ours, theirs, f'raw stages[{s}]')


# ------------------------------------------------------------------------------------------- sizes / counts

@pytest.mark.parametrize('arch, plain, with_norms', [
    ('tiny', 12_628_736, 12_628_736 + 2 * (64 + 128 + 256 + 512)),
    ('s', 25_022_208, 25_024_128),
    ('base', 56_034_432, 56_037_312),
])
def test_parameter_counts_match_spec(arch, plain, with_norms):
    with torch.device('meta'):
        assert count(BiFormer(arch, out_norm_cfg=None)) == plain
        assert count(BiFormer(arch)) == with_norms


# ------------------------------------------------------------------------------------------- checkpoints


# ------------------------------------------------------------------------------------------- options

@pytest.mark.parametrize('size', [(511, 511), (112, 137), (64, 64)])
def test_output_shapes_at_odd_sizes(size):
    model = BiFormer(**REDUCED).eval()
    h, w = size
    with torch.no_grad():
        outs = model(torch.randn(1, 3, h, w))
    for s, out in enumerate(outs):
        hs, ws = h, w
        for _ in range(s + 2):  # every 3x3 stride-2 conv with padding 1 is a ceil division
            hs, ws = (hs + 1) // 2, (ws + 1) // 2
        assert out.shape == (1, 32 * 2 ** s, hs, ws)


def test_no_auto_pad_raises_on_undivisible_size():
    model = BiFormer(**REDUCED, auto_pad=False).eval()
    assert len(model(torch.randn(1, 3, 128, 128))) == 4
    with pytest.raises(ValueError, match='not divisible by n_win=4'):
        model(torch.randn(1, 3, 100, 128))


def test_out_indices_subset():
    model = BiFormer(**REDUCED, out_indices=(1, -1)).eval()
    assert [i for i in range(4) if hasattr(model, f'norm{i}')] == [1, 3]
    outs = model(torch.randn(1, 3, 64, 64))
    assert [o.shape[1] for o in outs] == [64, 256]


def test_with_cp_same_outputs_and_gradients():
    torch.manual_seed(0)
    plain = BiFormer(**REDUCED)
    cp = BiFormer(**REDUCED, with_cp=True)
    cp.load_state_dict(plain.state_dict())
    assert_same_outputs_and_grads(plain, cp, torch.randn(2, 3, 72, 60))


def test_norm_eval_keeps_bn_in_eval():
    model = BiFormer(**REDUCED, norm_eval=True)
    model.train()
    bns = [m for m in model.modules() if isinstance(m, _BatchNorm)]
    assert len(bns) == 5 and not any(m.training for m in bns)
    assert all(p.requires_grad for m in bns for p in m.parameters())  # affine params still train
    assert model.stages[0].blocks[0].norm1.training
    before = model.stem[0].bn.running_mean.clone()
    model(torch.randn(2, 3, 32, 32))
    assert torch.equal(model.stem[0].bn.running_mean, before)


def test_weight_decay_names():
    """The recipes exempt names containing 'norm' from weight decay: LNs yes, stem/downsample BNs no."""
    model = BiFormer(**REDUCED)
    for name, m in model.named_modules():
        for pname, _ in m.named_parameters(recurse=False):
            full = f'{name}.{pname}'
            if isinstance(m, _BatchNorm):
                assert 'norm' not in full, full
            elif isinstance(m, torch.nn.LayerNorm):
                assert 'norm' in full, full


def test_syncbn_and_registry_build():
    model = MODELS.build(dict(type='mmsparse.BiFormer', **REDUCED, norm_cfg=dict(type='SyncBN')))
    assert isinstance(model.stem[0].bn, torch.nn.SyncBatchNorm)
    assert 'stages.3.downsample.bn.weight' in model.state_dict()


@pytest.mark.parametrize('kwargs, error, match', [
    (dict(arch='huge'), ValueError, "arch='huge' is not a known variant"),
    (dict(arch=dict(embed_dims=[32] * 4)), ValueError, "missing the keys \\['depths'\\]"),
    (dict(arch=dict(embed_dims=[32, 64, 128], depths=[1, 1, 1])), ValueError,
     r'arch\["embed_dims"\] must be one int or a sequence of 4'),
    (dict(topks=[1, 2, 4]), ValueError, 'topks must be one int or a sequence of 4'),
    (dict(topks=[1, 2, 0, -2]), ValueError, 'topk=0 is not supported'),
    (dict(n_win=0), ValueError, 'n_win must be a positive int'),
    (dict(out_indices=(4,)), ValueError, 'out_indices'),
    (dict(drop_path_rate=1.5), ValueError, 'drop_path_rate'),
    (dict(impl='fused'), ValueError, "impl='fused' is not known"),
    (dict(arch=dict(embed_dims=[48, 64, 128, 256], depths=[1] * 4)), ValueError, 'head_dim=32 must divide'),
    (dict(out_norm_cfg='LN'), TypeError, r'out_norm_cfg \(or None\) must be a dict with a "type"'),
])
def test_bad_arguments(kwargs, error, match):
    with pytest.raises(error, match=match):
        BiFormer(**{**dict(arch='tiny'), **kwargs})


# ------------------------------------------------------------------------------------------- configs

CONFIGS = sorted((REPO / 'configs' / 'biformer').glob('*.py'))
# recipe facts from the spec (section 7): lr, weight decay, images per GPU, drop path, n_win, AMP
RECIPES = {
    'maskrcnn': dict(lr=1e-4, wd=0.05, batch=2, n_win=16, dp=dict(s=0.2, b=0.3), norm_free=True),
    'retinanet': dict(lr=1e-4, wd=1e-4, batch=2, n_win=16, dp=dict(s=0.2, b=0.3), norm_free=False),
    'upernet': dict(lr=6e-5, wd=0.01, batch=2, n_win=8, dp=dict(s=0.3, b=0.4), norm_free=True),
    'semfpn': dict(lr=2e-4, wd=1e-4, batch=4, n_win=8, dp=dict(s=0.15, b=0.3), norm_free=False),
}


def test_all_configs_present():
    names = {p.name for p in CONFIGS}
    for method, data in (('retinanet', 'coco'), ('maskrcnn', 'coco'), ('upernet', 'ade20k'),
                         ('semfpn', 'ade20k')):
        for size in 'sb':
            assert f'{method}_biformer_{size}_{data}.py' in names


@pytest.mark.parametrize('path', CONFIGS, ids=lambda p: p.stem)
def test_config_builds_with_recipe(path):
    from mmengine.config import Config
    from mmengine.registry import MODELS as ROOT_MODELS
    from mmengine.registry import init_default_scope

    cfg = Config.fromfile(str(path))
    method, _, size, _ = path.stem.split('_')
    recipe = RECIPES[method]
    bb = cfg.model.backbone
    assert bb.type == 'mmsparse.BiFormer' and bb.arch == dict(s='small', b='base')[size]
    assert bb.n_win == recipe['n_win'] and bb.drop_path_rate == recipe['dp'][size]
    assert bb.init_cfg.prefix == 'backbone.' and bb.init_cfg.checkpoint.startswith('checkpoints/')
    assert bb.norm_eval == (cfg.default_scope == 'mmdet')
    assert bb.norm_cfg.type == ('BN' if cfg.default_scope == 'mmdet' else 'SyncBN')
    opt = cfg.optim_wrapper
    assert opt.type == 'AmpOptimWrapper' and opt.loss_scale == 512.
    assert opt.optimizer.lr == recipe['lr'] and opt.optimizer.weight_decay == recipe['wd']
    assert ('paramwise_cfg' in opt) == recipe['norm_free']
    assert cfg.train_dataloader.batch_size == recipe['batch']
    assert cfg.get('find_unused_parameters', False) == (method == 'retinanet')

    init_default_scope(cfg.default_scope)
    bb.init_cfg = None  # the converted checkpoint is not needed to build
    model = ROOT_MODELS.build(cfg.model)
    assert isinstance(model.backbone, BiFormer)
    assert [s.downsample.bn.__class__.__name__ for s in model.backbone.stages[1:]] == [
        'BatchNorm2d' if cfg.default_scope == 'mmdet' else 'SyncBatchNorm'] * 3
    if cfg.default_scope == 'mmdet':  # SyncBN needs a process group in training; the smoke test covers seg
        model.train()
        outs = model.backbone(torch.randn(1, 3, 96, 80))
        feats = model.neck(outs)
        assert len(feats) == 5 and all(f.shape[1] == 256 for f in feats)


@pytest.mark.slow
@pytest.mark.parametrize('path', [p for p in CONFIGS if '_s_' in p.name], ids=lambda p: p.stem)
def test_config_smoke(path, tmp_path):
    from tests import conftest as smoke
    smoke.run_config_smoke(str(path), str(tmp_path))  # checks the task's metrics are reported and finite


def test_init_weights_follows_official_init():
    model = BiFormer(**REDUCED)
    model.init_weights()
    block = model.stages[2].blocks[0]
    for layer in (block.attn.qkv, block.attn.proj, block.mlp.fc1, model.stages[3].blocks[0].attn.qkv):
        assert abs(layer.weight.std().item() - 0.02) < 0.004  # timm truncates at +-2 absolute: ~plain normal
    assert torch.count_nonzero(block.mlp.fc2.bias) == 0
    assert torch.equal(block.norm1.weight, torch.ones(128)) and torch.equal(model.norm2.bias, torch.zeros(128))


# ------------------------------------------------------------------- fast vs reference implementation

@pytest.mark.parametrize('name, cls, key', [('biformer_reduced_cls_autopad.pt', 'BiFormer', 'stages'),
                                            ('biformer_mm_reduced_autopad.pt', 'BiFormer_mm', 'dense_outs')])
def test_biformer_fast_path_matches_official_fixture(name, cls, key):
    fx = load_fixture(name)
    model = model_from_official(cls, fx['config'], fx['state_dict']).eval()
    bras = [m for m in model.modules() if isinstance(m, BiLevelRoutingAttention)]
    assert bras and all(m.impl == 'reference' for m in bras)
    model.impl = 'fast'
    assert all(m.impl == 'fast' for m in bras)
    for i, (x, ref) in enumerate(zip(fx['inputs'], fx['outputs'])):
        with torch.no_grad():
            outs = model(x)
        assert len(outs) == len(ref[key]) == 4
        for s, (ours, theirs) in enumerate(zip(outs, ref[key])):
            assert_close_to_reference(ours, theirs, f'{name} input {i} {key}[{s}] (sdpa)')


# ------------------------------------------------------------------- the channels-last block ('fast')

@pytest.mark.parametrize('topk, size', [(2, (19, 26)), (-2, (9, 7))], ids=['bra_padded', 'global'])
def test_channels_last_block_equals_reference_block_with_gradients(topk, size):
    """The 'fast' block (LayerNorms, attention and MLP on the (N, H, W, C) view, MLP as two GEMMs) against the
    authors' NCHW layer-by-layer block: outputs, input gradient and every parameter gradient, in training mode
    with stochastic depth (both layouts must drop the same samples of the batch)."""
    torch.manual_seed(0)
    ref = BiFormerBlock(32, topk=topk, num_heads=2, n_win=3, drop_path=0.5, impl='reference')
    fast = BiFormerBlock(32, topk=topk, num_heads=2, n_win=3, drop_path=0.5, impl='fast')
    fast.load_state_dict(ref.state_dict())
    for p in ref.parameters():  # not the unit / zero init: every parameter must matter
        torch.nn.init.normal_(p, std=0.2)
    fast.load_state_dict(ref.state_dict())
    x = torch.randn(4, 32, *size)
    grads, outs = [], []
    for block in (ref, fast):
        xi = x.clone().requires_grad_()
        torch.manual_seed(1)  # same stochastic-depth draws
        out = block.train()(xi)
        (out * torch.linspace(-1, 1, out.numel()).view_as(out)).sum().backward()
        outs.append(out.detach())
        grads.append({'input': xi.grad, **{n: p.grad for n, p in block.named_parameters()}})
    assert outs[0].is_contiguous() and outs[1].is_contiguous(memory_format=torch.channels_last)
    assert_equal_up_to_rounding(outs[1], outs[0], 'output')
    assert grads[0].keys() == grads[1].keys()
    for name in grads[0]:  # summed over 4 x 19 x 26 positions: rounding grows with the sum, hence the scale
        assert_equal_up_to_rounding(grads[1][name], grads[0][name], name)
    # stochastic depth did drop a residual branch of some sample: its MLP branch then adds nothing
    fast.eval()
    with torch.no_grad():
        assert not torch.equal(fast(x), outs[1])


def assert_equal_up_to_rounding(actual, expected, name, rel=2e-5):
    """max |actual - expected| within ``rel`` of the tensor's own magnitude (float32 sums, other orders)."""
    scale = expected.abs().max().item()
    diff = (actual - expected).abs().max().item()
    assert scale > 0 and diff <= rel * scale, f'{name}: max diff {diff:.3g} against magnitude {scale:.3g}'


def test_channels_last_block_runs_no_convolution_for_the_mlp():
    """The speed of the 'fast' block comes from the MLP as GEMMs on the NHWC view: its 1x1 convolutions (kept
    for the state dict) are never called."""
    block = BiFormerBlock(32, topk=1, num_heads=2, n_win=2)
    assert block.impl == 'fast'
    called = []
    for m in (block.mlp.fc1, block.mlp.fc2, block.norm1, block.norm2):
        m.register_forward_hook(lambda m, i, o: called.append(m))
    block(torch.randn(1, 32, 8, 8))
    assert called == []
    block.impl = 'reference'
    block(torch.randn(1, 32, 8, 8))
    assert len(called) == 4


def test_fast_backbone_on_channels_last_equals_reference_backbone():
    """Whole backbone, training mode, odd size: the channels-last blocks give the reference outputs and gradients,
    and the outputs are handed on contiguous."""
    torch.manual_seed(0)
    ref = BiFormer(**REDUCED, impl='reference', drop_path_rate=0.2)
    fast = BiFormer(**REDUCED, impl='fast', drop_path_rate=0.2)
    fast.load_state_dict(ref.state_dict())
    x = torch.randn(2, 3, 75, 61)
    results = []
    for model in (ref, fast):
        torch.manual_seed(3)
        outs = model.train()(x)
        sum((o * o.flip(-1)).mean() for o in outs).backward()
        assert all(o.is_contiguous() for o in outs)
        results.append((outs, {n: p.grad for n, p in model.named_parameters()}))
    for i, (a, b) in enumerate(zip(results[0][0], results[1][0])):
        assert_equal_up_to_rounding(b.detach(), a.detach(), f'output {i}')
    for name, g in results[0][1].items():
        if name.endswith('conv.bias'):  # biases of convs followed by BN: zero gradient up to rounding
            assert g.abs().max() < 1e-6 and results[1][1][name].abs().max() < 1e-6
        else:
            assert_equal_up_to_rounding(results[1][1][name], g, name, rel=1e-4)
