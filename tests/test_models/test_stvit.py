"""STViT backbone: parity with the authors' fixtures, conversion, OpenMMLab behaviour, AMP."""
import pytest
import torch
from torch.nn.modules.batchnorm import _BatchNorm

from mmsparse.testing import model_from_official
from mmsparse.models import STViT
from mmsparse.models.layers import LayerScale2d
from mmsparse.registry import MODELS
from mmsparse.utils.compat import TORCH_VERSION
from tests.conftest import REPO, assert_close_to_reference, load_fixture

MODEL_FIXTURES = ['stvit_reduced_layerscale.pt', 'stvit_reduced_nolayerscale.pt']
TINY = dict(embed_dims=[8, 16, 32, 32], depths=[1, 1, 2, 1], num_heads=[1, 2, 2, 4])


def tiny(**kwargs):
    return STViT(arch=dict(TINY), **kwargs)


@pytest.mark.parametrize('name', MODEL_FIXTURES)
def test_matches_official_stvit(name):
    fx = load_fixture(name)
    model = model_from_official('STViT', fx['config'], fx['state_dict'])
    assert not any(hasattr(model, f'norm{i}') for i in range(4))
    for x, ref in zip(fx['inputs'], fx['outputs']):  # 128x128 and 100x132 (padded inside STA at s = 0, 1)
        with torch.no_grad():
            outs = model(x)
            stem = model.stem(x)
        assert_close_to_reference(stem, ref['stem'], f'{name} stem')
        for s, (ours, theirs) in enumerate(zip(outs, ref['stages'])):
            assert_close_to_reference(ours, theirs, f'{name} stage {s} {tuple(x.shape)}')


def test_registered_and_builds_from_config():
    model = MODELS.build(dict(type='STViT', arch=dict(TINY)))
    assert isinstance(model, STViT)


@pytest.mark.parametrize('size', [(64, 64), (63, 63), (56, 69)])
def test_output_shapes_and_odd_sizes(size):
    model = tiny().eval()
    with torch.no_grad():
        outs = model(torch.randn(1, 3, *size))
    h, w = size
    for i, out in enumerate(outs):
        stride = 2 ** (i + 2)
        assert out.shape == (1, TINY['embed_dims'][i], -(-h // stride), -(-w // stride))
        assert torch.isfinite(out).all()


def test_out_indices_and_out_norms():
    model = tiny(out_indices=(1, -1)).eval()
    assert model.out_indices == (1, 3)
    assert hasattr(model, 'norm1') and hasattr(model, 'norm3') and not hasattr(model, 'norm0')
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        outs = model(x)
        raw = model.forward_stages(x)
    assert [o.shape[1] for o in outs] == [16, 32]
    torch.testing.assert_close(outs[1], model.norm3(raw[3]))
    # the default output norm is a channel LN: zero mean over channels
    torch.testing.assert_close(outs[0].mean(1), torch.zeros_like(outs[0][:, 0]), atol=1e-5, rtol=0)


def test_per_stage_stoken_size_and_n_iter():
    model = tiny(stoken_size=[(4, 2), 2, 1, 1], n_iter=2)
    attn = model.stages[0].blocks[0].attn
    assert attn.stoken_size == (4, 2) and attn.n_iter == 2
    assert model.stages[2].blocks[0].attn.is_global
    assert tuple(o.shape[-1] for o in model.eval()(torch.randn(1, 3, 40, 36))) == (9, 5, 3, 2)


def test_with_cp_same_outputs_and_gradients():
    torch.manual_seed(1)
    ref = tiny(drop_path_rate=0.)
    model = tiny(drop_path_rate=0., with_cp=True)
    model.load_state_dict(ref.state_dict())
    ref.train()
    model.train()
    x = torch.randn(2, 3, 48, 40)
    outs_ref, outs = ref(x), model(x)
    sum(o.square().mean() for o in outs_ref).backward()
    sum(o.square().mean() for o in outs).backward()
    for a, b in zip(outs, outs_ref):
        torch.testing.assert_close(a, b)
    for (name, p), q in zip(model.named_parameters(), ref.parameters()):
        torch.testing.assert_close(p.grad, q.grad, msg=name)


def test_norm_eval():
    model = tiny(norm_eval=True)
    model.train()
    bns = [m for m in model.modules() if isinstance(m, _BatchNorm)]
    assert bns and all(not m.training for m in bns)
    assert model.stages[0].blocks[0].attn.training
    before = bns[0].running_mean.clone()
    model(torch.randn(2, 3, 32, 32))
    torch.testing.assert_close(bns[0].running_mean, before)


def test_norm_cfg_reaches_every_batch_norm():
    model = tiny(norm_cfg=dict(type='BN', eps=1e-3))
    bns = [m for m in model.modules() if isinstance(m, _BatchNorm)]
    assert len(bns) == 4 + 3 + sum(TINY['depths'])  # stem, downsamplings, FFN pre-norms
    assert all(m.eps == 1e-3 for m in bns)


def test_layer_scale_follows_arch():
    assert not isinstance(STViT('small').stages[3].blocks[0].gamma1, LayerScale2d)
    base = STViT('b', layer_scale_init_value=1e-5)
    assert not isinstance(base.stages[1].blocks[0].gamma1, LayerScale2d)
    g = base.stages[2].blocks[0].gamma1
    assert isinstance(g, LayerScale2d) and g.gamma.shape == (384, 1, 1) and torch.all(g.gamma == 1e-5)


@pytest.mark.parametrize('kwargs, match', [
    (dict(arch='tiny'), 'arch'),
    (dict(arch=dict(embed_dims=[8] * 4, depths=[1] * 4)), 'num_heads'),
    (dict(stoken_size=[8, 0, 1, 1]), 'stoken_size'),
    (dict(stoken_size=[8, 4, 1]), 'stoken_size'),
    (dict(stoken_size=[8, -4, 1, 1]), 'stoken_size'),
    (dict(n_iter=0), 'n_iter'),
    (dict(layer_scale=[True]), 'layer_scale'),
    (dict(out_indices=(4,)), 'out_indices'),
    (dict(frozen_stages=5), 'frozen_stages'),
    (dict(drop_path_rate=1.5), 'drop_path_rate'),
    (dict(impl='flash'), "impl='flash' is not known"),
])
def test_bad_arguments(kwargs, match):
    kwargs.setdefault('arch', dict(TINY))
    with pytest.raises((ValueError, TypeError), match=match):
        STViT(**kwargs)


def _amp_cases():
    cases = [('cpu', torch.bfloat16), ('cpu', torch.float16)]
    if torch.cuda.is_available():
        cases.append(('cuda', torch.float16))
    return cases


@pytest.mark.parametrize('device, dtype', _amp_cases())
def test_autocast_forward_backward_is_finite(device, dtype):
    if device == 'cpu' and dtype == torch.float16 and TORCH_VERSION < (2, 4):
        pytest.skip(f'torch {torch.__version__} has no float16 CPU autocast (bfloat16 only before 2.4)')
    torch.manual_seed(0)
    model = tiny(drop_path_rate=0.1).to(device).train()
    x = torch.randn(2, 3, 45, 38, device=device)
    with torch.autocast(device, dtype=dtype):
        outs = model(x)
        _, extras = model.stages[0].blocks[0].attn.forward_with_intermediates(torch.randn(1, 8, 12, 12,
                                                                                          device=device))
    assert extras['association'].dtype == torch.float32  # the association and normalisation stay in fp32
    assert extras['stoken_refine_in'].dtype == torch.float32
    loss = sum(o.float().square().mean() for o in outs)
    loss.backward()
    assert all(torch.isfinite(o).all() for o in outs)
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)


CONFIGS = sorted((REPO / 'configs' / 'stvit').glob('*_stvit_*.py'))


def test_all_configs_present():
    names = {p.name for p in CONFIGS}
    for task, data in (('maskrcnn', 'coco'), ('retinanet', 'coco'), ('upernet', 'ade20k'), ('semfpn', 'ade20k')):
        for v in 'sbl':
            assert f'{task}_stvit_{v}_{data}.py' in names


@pytest.mark.parametrize('path', CONFIGS, ids=lambda p: p.stem)
def test_config_builds(path):
    from mmengine.config import Config
    from mmengine.registry import MODELS as ROOT_MODELS
    from mmengine.registry import init_default_scope
    cfg = Config.fromfile(str(path))
    init_default_scope(cfg.default_scope)
    bb = cfg.model.backbone
    assert bb.type == 'mmsparse.STViT' and bb.init_cfg.type == 'Pretrained' and bb.init_cfg.prefix == 'backbone.'
    assert cfg.optim_wrapper.optimizer.type == 'AdamW'
    assert cfg.optim_wrapper.paramwise_cfg.custom_keys['norm'].decay_mult == 0
    # detection replaces stage-3 global attention over 50x84 tokens by 2x2 super tokens; segmentation keeps it
    assert bb.stoken_size == ([8, 4, 2, 1] if cfg.default_scope == 'mmdet' else [8, 4, 1, 1])
    model = ROOT_MODELS.build(cfg.model)
    dims = [model.backbone.embed_dims[i] for i in model.backbone.out_indices]  # the returned stages
    head_in = cfg.model.neck.in_channels if 'neck' in cfg.model else cfg.model.decode_head.in_channels
    assert list(head_in) == dims
    if 'auxiliary_head' in cfg.model:
        assert cfg.model.auxiliary_head.in_channels == dims[cfg.model.auxiliary_head.in_index]


@pytest.mark.slow
@pytest.mark.parametrize('path', [p for p in CONFIGS if '_s_' in p.name], ids=lambda p: p.stem)
def test_config_smoke(path, tmp_path):
    from tests import conftest as smoke
    smoke.run_config_smoke(str(path), str(tmp_path))  # checks the task's metrics are reported and finite


# ------------------------------------------------------------------- fast vs reference implementation

@pytest.mark.parametrize('name', ['stvit_reduced_layerscale.pt', 'stvit_reduced_nolayerscale.pt'])
def test_stvit_fast_path_matches_official_fixture(name):
    from mmsparse.ops.super_token_attention import SuperTokenAttention
    fx = load_fixture(name)
    model = model_from_official('STViT', fx['config'], fx['state_dict']).eval()
    stas = [m for m in model.modules() if isinstance(m, SuperTokenAttention) and not m.is_global]
    assert stas and all(m.impl == 'reference' for m in stas)
    model.impl = 'fast'
    assert all(m.impl == 'fast' for m in stas)
    for i, (x, ref) in enumerate(zip(fx['inputs'], fx['outputs'])):
        with torch.no_grad():
            outs = model(x)
        for s, (ours, theirs) in enumerate(zip(outs, ref['stages'])):
            assert_close_to_reference(ours, theirs, f'{name} input {i} stages[{s}] (fast)')
