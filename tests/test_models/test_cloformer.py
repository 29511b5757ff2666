"""CloFormer backbone: golden parity, dense taps, any size, with_cp, freezing, conversion, bad arguments."""

import pytest
import torch
import torch.nn.functional as F
from torch.nn.modules.batchnorm import _BatchNorm

from mmsparse.testing import model_from_official
from mmsparse.models import CloFormer
from mmsparse.registry import MODELS
from tests.conftest import REPO, assert_close_to_reference, load_fixture, assert_same_outputs_and_grads

FIXTURE = 'cloformer_reduced.pt'

# the reduced configuration of the fixture, as an mmsparse arch dict
REDUCED = dict(embed_dims=[16, 32, 64, 128], depths=[1, 1, 2, 1], num_heads=[2, 2, 4, 8],
               group_splits=[[1, 1], [1, 1], [2, 2], [2, 6]], kernel_sizes=[[3], [5], [7], [9]],
               window_sizes=[8, 4, 2, 1], mlp_kernel_sizes=[5] * 4, mlp_ratios=[4] * 4)


def _expected(ref):
    """The fixture's dense outputs: taps inside the stride-2 blocks of stages 1-3, then stage 4's output."""
    return list(ref['dense_taps']) + [ref['stages'][3]]


@pytest.fixture(scope='module')
def official():
    fx = load_fixture(FIXTURE)
    return fx, model_from_official(fx['official_class'], fx['config'], fx['state_dict'])


def test_matches_official_fixture(official):
    fx, model = official
    assert isinstance(model, CloFormer) and not model.training
    assert model.impl == 'reference' and all(m.impl == 'reference' for m in model.modules() if hasattr(m, 'impl'))
    for i, (x, ref) in enumerate(zip(fx['inputs'], fx['outputs'])):
        with torch.no_grad():
            assert_close_to_reference(model.stem(x), ref['stem'], f'stem[{i}]')
            outs = model(x)
        assert len(outs) == 4
        for s, (ours, exp) in enumerate(zip(outs, _expected(ref))):
            assert_close_to_reference(ours, exp, f'input {i} output {s}')


def test_default_output_norms_are_groupnorm_of_the_taps(official):
    fx, ref_model = official
    model = CloFormer(REDUCED).eval()  # default out_norm_cfg: GroupNorm(1, C), initialised to 1 / 0
    missing, unexpected = model.load_state_dict(ref_model.state_dict(), strict=False)
    assert sorted(missing) == sorted(f'norm{i}.{p}' for i in range(4) for p in ('weight', 'bias'))
    assert not unexpected
    x, ref = fx['inputs'][1], fx['outputs'][1]
    with torch.no_grad():
        outs = model(x)
    for s, (ours, exp) in enumerate(zip(outs, _expected(ref))):
        assert_close_to_reference(ours, F.group_norm(exp, 1, eps=1e-5), f'normed output {s}')


@pytest.mark.parametrize('arch, total, without_out_norms', [
    ('xxs', 3_910_176, 3_909_216), ('xs', 6_819_824, 6_818_512), ('s', 11_897_408, 11_895_680)])
def test_parameter_counts(arch, total, without_out_norms):
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    assert count(CloFormer(arch)) == total
    assert count(CloFormer(f'cloformer_{arch}', out_norm_cfg=None)) == without_out_norms


@pytest.mark.parametrize('size', [(511, 511), (112, 137), (64, 64), (33, 95)])
def test_any_input_size(size):
    model = CloFormer(REDUCED).eval()
    h, w = size
    with torch.no_grad():
        outs = model(torch.randn(1, 3, h, w))
    for i, out in enumerate(outs):
        stride = 2 ** (i + 2)
        assert out.shape == (1, REDUCED['embed_dims'][i], -(-h // stride), -(-w // stride))
        assert torch.isfinite(out).all()


def test_out_indices_and_channels():
    model = CloFormer(REDUCED, out_indices=(1, -1)).eval()
    outs = model(torch.randn(2, 3, 64, 96))
    assert [tuple(o.shape) for o in outs] == [(2, 32, 8, 12), (2, 128, 2, 3)]
    assert not hasattr(model, 'norm0') and hasattr(model, 'norm3')


def test_stochastic_depth_schedule():
    model = CloFormer('xs', drop_path_rate=0.06)
    rates = [getattr(b.drop_path, 'drop_prob', 0.0) for stage in model.stages for b in stage.blocks]
    torch.testing.assert_close(torch.tensor(rates), torch.linspace(0, 0.06, 12))


def test_with_cp_same_outputs_and_gradients():
    torch.manual_seed(0)
    plain = CloFormer(REDUCED, drop_path_rate=0.0)
    ckpt = CloFormer(REDUCED, drop_path_rate=0.0, with_cp=True)
    ckpt.load_state_dict(plain.state_dict())
    assert_same_outputs_and_grads(plain, ckpt, torch.randn(2, 3, 64, 64))




def test_norm_eval():
    model = CloFormer(REDUCED, norm_eval=True)
    model.train()
    bns = [m for m in model.modules() if isinstance(m, _BatchNorm)]
    assert len(bns) == 4 + 3  # stem convs 1-4 and the three stride-2 shortcuts
    assert all(not m.training for m in bns)
    assert model.stages[0].blocks[0].norm1.training  # GroupNorms are untouched
    assert CloFormer(REDUCED).train().stem.conv1.conv[1].training


def test_norm_cfg_is_used():
    model = CloFormer(REDUCED, norm_cfg=dict(type='GN', num_groups=2))
    assert isinstance(model.stages[0].blocks[0].downsample[1], torch.nn.GroupNorm)
    assert isinstance(model.stem.conv2.conv[1], torch.nn.GroupNorm)


@pytest.mark.parametrize('kwargs, error, match', [
    (dict(arch='xxl'), ValueError, "arch='xxl'"),
    (dict(arch=dict(embed_dims=[16, 32])), ValueError, 'missing the keys'),
    (dict(arch=dict(REDUCED, depths=[1, 1, 2])), ValueError, r'arch\["depths"\] must be .* sequence of 4'),
    (dict(arch=dict(REDUCED, group_splits=[[1, 1], [1, 1], [2, 1], [2, 6]])), ValueError, 'sum to num_heads'),
    (dict(out_indices=(0, 4)), ValueError, 'out_indices'),
    (dict(frozen_stages=5), ValueError, 'frozen_stages'),
    (dict(drop_path_rate=1.5), ValueError, 'drop_path_rate'),
    (dict(norm_cfg='BN'), TypeError, 'norm_cfg'),
    (dict(out_norm_cfg=dict(num_groups=1)), TypeError, 'out_norm_cfg'),
    (dict(impl='cuda'), ValueError, "impl='cuda' is not known"),
])
def test_bad_arguments(kwargs, error, match):
    kwargs.setdefault('arch', REDUCED)
    with pytest.raises(error, match=match):
        CloFormer(**kwargs)


def test_bad_input():
    with pytest.raises(ValueError, match='NCHW'):
        CloFormer(REDUCED)(torch.randn(3, 64, 64))


def test_registered_in_mmsparse_scope():
    model = MODELS.build(dict(type='mmsparse.CloFormer', arch=REDUCED, out_indices=(3,)))
    assert isinstance(model, CloFormer)


# ---------------------------------------------------------------- conversion











# ---------------------------------------------------------------- configs

CONFIGS = sorted((REPO / 'configs' / 'cloformer').glob('*.py'))
DROP_PATH = {'xxs': 0.0, 'xs': 0.06, 's': 0.06}  # the authors' ImageNet values


def _build_from_config(path):
    from mmengine.config import Config
    from mmengine.registry import init_default_scope
    cfg = Config.fromfile(str(path))
    init_default_scope(cfg.default_scope)
    if cfg.default_scope == 'mmdet':
        from mmdet.registry import MODELS as TASK_MODELS
    else:
        from mmseg.registry import MODELS as TASK_MODELS
    return cfg, TASK_MODELS.build(cfg.model)


def test_all_configs_present():
    names = {p.name for p in CONFIGS}
    for task, data in (('retinanet', 'coco'), ('maskrcnn', 'coco'), ('upernet', 'ade20k'), ('semfpn', 'ade20k')):
        for arch in DROP_PATH:
            assert f'{task}_cloformer_{arch}_{data}.py' in names


@pytest.mark.parametrize('path', CONFIGS, ids=lambda p: p.stem)
def test_config_builds_and_wires_channels(path):
    cfg, model = _build_from_config(path)
    arch = path.stem.split('_')[2]
    backbone = model.backbone
    assert isinstance(backbone, CloFormer) and backbone.arch == CloFormer.arch_zoo[arch]
    assert cfg.model.backbone.drop_path_rate == DROP_PATH[arch]
    assert cfg.model.backbone.init_cfg.type == 'Pretrained' and cfg.model.backbone.init_cfg.prefix == 'backbone.'
    channels = [backbone.embed_dims[i] for i in backbone.out_indices]
    head_cfg = cfg.model.get('neck') or cfg.model.decode_head
    assert list(head_cfg.in_channels) == channels
    if 'auxiliary_head' in cfg.model:
        aux = cfg.model.auxiliary_head
        assert aux.in_channels == backbone.embed_dims[aux.in_index]
    model.eval()
    with torch.no_grad():
        feats = model.extract_feat(torch.randn(1, 3, 96, 128))
    assert all(torch.isfinite(f).all() for f in feats)


@pytest.mark.slow
@pytest.mark.parametrize('path', [p for p in CONFIGS if '_xxs_' in p.name], ids=lambda p: p.stem)
def test_config_smoke_train_and_test(path, tmp_path):
    smoke = pytest.importorskip('tests.smoke', reason='tests/smoke.py (run_config_smoke) is not available')
    smoke.run_config_smoke(str(path), str(tmp_path))  # checks the task's metrics are reported and finite


# ------------------------------------------------------------------- fast vs reference implementation

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
