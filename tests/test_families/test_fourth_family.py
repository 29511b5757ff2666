"""A fourth family, defined here and registered once, is found everywhere the three built-in ones are.

The family (a windowed dense attention operator and a tiny 4-stage backbone) lives only in this module: no
other file names it. After :func:`mmsparse.families.register_family` it must build from a config through
mmsparse's ``MODELS``, be a ``SparseAttnBlock`` / ``SparseAttnFPN`` attention type, a converter family, be drawn
by the visualization from its own ``explain`` and export to ONNX. The registrations are undone at the end.
Also: every registered family's tiny config and every operator's plug-in defaults build and run.
"""
from __future__ import annotations

import types
from collections import OrderedDict

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from mmengine.model import BaseModule

from mmsparse import families
from mmsparse.converters import FAMILIES, convert, convert_checkpoint
from mmsparse.families import FamilySpec, OperatorCase, OperatorSpec
from mmsparse.models import SparseAttnBlock, SparseAttnFPN
from mmsparse.models.plugins import ATTN_TYPES
from mmsparse.registry import MODELS
from mmsparse.testing import OFFICIAL_CLASSES
from mmsparse.visualization import attention_maps, capture_operator_inputs, family_of

NAME = 'windownet'
OP_TYPE = 'WindowAttention4th'
BACKBONE_TYPE = 'WindowNet4th'


class WindowAttention4th(nn.Module):
    """Dense multi-head attention inside non-overlapping ``window_size`` squares; NCHW in and out."""

    def __init__(self, embed_dims: int, num_heads: int = 1, window_size: int = 7) -> None:
        super().__init__()
        self.num_heads, self.window_size = num_heads, window_size
        self.scale = (embed_dims // num_heads)**-0.5
        self.qkv = nn.Conv2d(embed_dims, 3 * embed_dims, 1)
        self.proj = nn.Conv2d(embed_dims, embed_dims, 1)

    def _windows(self, t: torch.Tensor) -> torch.Tensor:
        # (N, C, Hp, Wp) -> (N * windows, heads, ws * ws, C / heads)
        n, c, hp, wp = t.shape
        ws, m = self.window_size, self.num_heads
        t = t.view(n, m, c // m, hp // ws, ws, wp // ws, ws)
        return t.permute(0, 3, 5, 1, 4, 6, 2).reshape(-1, m, ws * ws, c // m)

    def _attention(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The padded value windows and the attention weights, shared by :meth:`forward` and :meth:`explain`."""
        ws = self.window_size
        h, w = x.shape[-2:]
        pad = (0, -w % ws, 0, -h % ws)
        q, k, v = (self._windows(t) for t in self.qkv(F.pad(x, pad)).chunk(3, dim=1))
        # padded pixels are no keys: the weights of a query cover real pixels only
        real = self._windows(F.pad(x.new_ones(x.shape[0], self.num_heads, h, w), pad)).transpose(-2, -1) > 0
        logits = (q * self.scale @ k.transpose(-2, -1)).masked_fill(~real, float('-inf'))
        return v, logits.softmax(-1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, c, h, w = x.shape
        ws, m = self.window_size, self.num_heads
        v, attn = self._attention(x)
        hp, wp = h + (-h % ws), w + (-w % ws)
        out = (attn @ v).view(n, hp // ws, wp // ws, m, ws, ws, c // m)
        out = out.permute(0, 3, 6, 1, 4, 2, 5).reshape(n, c, hp, wp)[..., :h, :w]
        return self.proj(out)

    def explain(self, x: torch.Tensor, query_yx: tuple[int, int]) -> dict:
        """Weights of the query pixel over the (h, w) map, per head and head-mean (0 outside its window)."""
        ws = self.window_size
        h, w = x.shape[-2:]
        fy, fx = query_yx
        _, attn = self._attention(x[:1])
        wins_x = (w + (-w % ws)) // ws
        row = attn[(fy // ws) * wins_x + fx // ws, :, (fy % ws) * ws + fx % ws]  # (heads, ws * ws)
        per_head = x.new_zeros(self.num_heads, h + (-h % ws), w + (-w % ws))
        y0, x0 = fy // ws * ws, fx // ws * ws
        per_head[:, y0:y0 + ws, x0:x0 + ws] = row.view(-1, ws, ws)
        per_head = per_head[:, :h, :w]
        return dict(per_head=per_head, weights=per_head.mean(0), caption=f'{ws}x{ws} window attention')


class WindowNet4th(BaseModule):
    """Stride-4 stem, then 4 stages (a stride-2 conv from stage 1 on) of one pre-norm window attention each."""

    def __init__(self, embed_dims=(8, 16, 16, 16), num_heads: int = 2, window_size: int = 4,
                 init_cfg: dict | None = None) -> None:
        super().__init__(init_cfg=init_cfg)
        dims = list(embed_dims)
        self.stem = nn.Conv2d(3, dims[0], 4, stride=4)
        self.downsamples = nn.ModuleList(
            [nn.Identity()] + [nn.Conv2d(a, b, 2, stride=2) for a, b in zip(dims[:-1], dims[1:])])
        self.norms = nn.ModuleList(nn.GroupNorm(1, d) for d in dims)
        self.attns = nn.ModuleList(WindowAttention4th(d, num_heads, window_size) for d in dims)

    def forward(self, x: torch.Tensor) -> tuple:
        x, outs = self.stem(x), []
        for down, norm, attn in zip(self.downsamples, self.norms, self.attns):
            x = down(x)
            x = x + attn(norm(x))
            outs.append(x)
        return tuple(outs)


def _convert_state_dict(sd: dict) -> OrderedDict:
    """The 'authors' layout' of this family: ``layers.{i}.attn.*`` -> ``attns.{i}.*``."""
    return OrderedDict((k.replace('layers.', 'attns.').replace('.attn.', '.'), v) for k, v in sd.items())


converter = types.ModuleType('windownet_converter')
converter.convert_state_dict = _convert_state_dict
converter.upgrade_state_dict = lambda sd: OrderedDict(sd)

SPEC = FamilySpec(
    name=NAME, backbone=WindowNet4th, converter=converter,
    operators=(OperatorSpec(WindowAttention4th, short='win', plugin_defaults=dict(num_heads=2, window_size=4),
                            bench_kwargs=dict(num_heads=2, window_size=8),
                            device_cases=dict(win_windownet_stage1=OperatorCase(
                                dict(num_heads=2, window_size=8), (2, 16, 128, 128), (1, 16, 16, 16)))), ),
    presets={'windownet-t': dict(embed_dims=(8, 16, 16, 16))},
    # scoped: only the built-in public names are registered into mmdet's / mmseg's registries
    tiny=dict(type=f'mmsparse.{BACKBONE_TYPE}', embed_dims=(8, 16, 16, 16)), tiny_input=(64, 64))


@pytest.fixture(scope='module')
def fourth():
    """The fourth family, registered for this module's tests and removed afterwards."""
    MODELS.register_module(name=BACKBONE_TYPE, module=WindowNet4th)
    families.register_family(SPEC)
    try:
        yield SPEC
    finally:
        families.unregister_family(NAME)
        MODELS._module_dict.pop(BACKBONE_TYPE, None)


def _backbone(spec: FamilySpec) -> nn.Module:
    torch.manual_seed(0)
    return MODELS.build(spec.tiny_cfg()).eval()


def test_backbone_builds_from_config(fourth):
    from mmengine.registry import DefaultScope
    with DefaultScope.overwrite_default_scope('mmdet'):  # as inside an mmdet config
        assert type(MODELS.build(fourth.tiny_cfg())) is WindowNet4th
    model = _backbone(fourth)
    assert type(model) is WindowNet4th
    with torch.no_grad():
        outs = model(torch.randn(1, 3, 64, 64))
    assert [tuple(o.shape) for o in outs] == [(1, 8, 16, 16), (1, 16, 8, 8), (1, 16, 4, 4), (1, 16, 2, 2)]
    assert families.get_family(NAME.upper()) is fourth and NAME in families.list_families()
    assert family_of(model.attns[0]) == NAME and families.family_of(model) is None


def test_plugin_block_and_fpn_take_the_operator(fourth):
    assert OP_TYPE in ATTN_TYPES  # the view imported before the registration
    block = SparseAttnBlock(16, attn_cfg=dict(type=f'mmsparse.{OP_TYPE}'), layer_scale_init_value=1.)
    assert isinstance(block.attn, WindowAttention4th) and block.attn.window_size == 4  # the spec's default
    x = torch.randn(2, 16, 10, 12)
    assert block(x).shape == x.shape
    neck = SparseAttnFPN([8, 16, 16, 16], 8, 4, attn_levels=(1, ), attn_cfg=dict(type=OP_TYPE, window_size=2))
    assert isinstance(neck.attn_blocks['1'].attn, WindowAttention4th) and neck.attn_blocks['1'].attn.window_size == 2
    with torch.no_grad():
        outs = neck(_backbone(fourth)(torch.randn(1, 3, 64, 64)))
    assert [o.shape[-1] for o in outs] == [16, 8, 4, 2]


def test_unknown_type_names_the_registered_ones(fourth):
    with pytest.raises(ValueError, match=OP_TYPE):
        SparseAttnBlock(16, attn_cfg=dict(type='NoSuchAttention'))


def test_converter_entry(fourth):
    assert FAMILIES[NAME] is converter
    model = _backbone(fourth)
    ours = model.state_dict()
    theirs = {k.replace('attns.', 'layers.').replace('.qkv', '.attn.qkv').replace('.proj', '.attn.proj'): v
              for k, v in ours.items()}
    assert set(theirs) != set(ours)
    assert convert(NAME, {'model': theirs}).keys() == ours.keys()
    ckpt = convert_checkpoint(NAME, theirs)
    assert set(ckpt['state_dict']) == {'backbone.' + k for k in ours}
    assert NAME not in OFFICIAL_CLASSES.values() and 'BiFormer' in OFFICIAL_CLASSES  # official=None: no builders


def test_operator_explains_its_own_forward(fourth):
    """The explained weights x the values give the operator's output at the query, before ``proj``."""
    torch.manual_seed(0)
    op = WindowAttention4th(8, num_heads=2, window_size=4).eval()
    x = torch.randn(1, 8, 10, 11)
    seen = {}
    op.proj.register_forward_pre_hook(lambda m, args: seen.update(out=args[0]))
    with torch.no_grad():
        op(x)
        for fy, fx in [(0, 0), (5, 6), (9, 10)]:
            per_head = op.explain(x, (fy, fx))['per_head']
            assert per_head.shape == (2, 10, 11)
            v = op.qkv(x)[0, 16:].view(2, 4, 10, 11)  # heads channel-major
            mixed = torch.einsum('mhw,mdhw->md', per_head, v).reshape(8)
            torch.testing.assert_close(mixed, seen['out'][0, :, fy, fx], rtol=1e-5, atol=1e-6)
            assert per_head[:, fy // 4 * 4:fy // 4 * 4 + 4, fx // 4 * 4:fx // 4 * 4 + 4].sum() == pytest.approx(2)


def test_visualization_draws_the_explained_attention(fourth):
    model = _backbone(fourth)
    img = np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)
    x = torch.randn(1, 3, 64, 64)
    assert len(capture_operator_inputs(model, x)) == 4
    points = [(5, 7), (40, 50)]
    maps, skipped = attention_maps(model, img, x, points)
    assert skipped == {} and [m.stage for m in maps] == [0, 1, 2, 3]
    for m in maps:
        assert m.family == NAME and len(m.panels) == len(points) and 'window attention' in m.captions[0]
        assert all(p.shape == img.shape and p.dtype == np.uint8 for p in m.panels)
        assert m.meta[0]['feature_yx'] == [7 // m.stride, 5 // m.stride]


def test_onnx_export_matches_pytorch(fourth, tmp_path):
    pytest.importorskip('onnxruntime')
    from mmsparse.deployment import export_onnx, make_session
    holder = nn.Module()
    holder.backbone = _backbone(fourth)
    path = str(tmp_path / 'windownet.onnx')
    names = export_onnx(holder, path, (64, 64), 'backbone')
    x = torch.randn(1, 3, 64, 64)
    got = make_session(path).run(None, {'input': x.numpy()})
    with torch.no_grad():
        want = holder.backbone(x)
    assert len(names) == len(got) == 4
    for g, w in zip(got, want):
        np.testing.assert_allclose(g, w.numpy(), rtol=1e-4, atol=1e-5)


# ------------------------------------------------------------------------------------ every registered family
@pytest.mark.parametrize('name', families.list_families())
def test_tiny_config_builds_and_runs(name):
    spec = families.get_family(name)
    model = MODELS.build(spec.tiny_cfg()).eval()
    assert isinstance(model, spec.backbone)
    with torch.no_grad():
        outs = model(torch.randn(1, 3, *spec.tiny_input))
    assert len(outs) == 4 and all(torch.isfinite(o).all() for o in outs)
    assert families.family_of(next(m for m in model.modules() if families.operator_spec(m))) == name


@pytest.mark.parametrize('op', [op for name in families.list_families()
                                for op in families.get_family(name).operators if op.plugin_defaults is not None],
                         ids=lambda op: op.name)
def test_plugin_defaults_build(op):
    block = SparseAttnBlock(32, attn_cfg=op.plugin_cfg(), layer_scale_init_value=1.)
    assert type(block.attn) is op.cls and ATTN_TYPES[op.name][0] is op.cls
    x = torch.randn(1, 32, 16, 16)
    assert block(x).shape == x.shape


def test_benchmark_and_device_check_cases(fourth):
    """benchmark.py's --layer / --backbone presets and the GPU check's operator cases come from the spec."""
    from mmsparse.benchmark import cases, device_check
    assert cases.LAYERS['win'] == (WindowAttention4th, dict(num_heads=2, window_size=8))
    assert cases.BACKBONES['windownet-t'] == (BACKBONE_TYPE, dict(embed_dims=(8, 16, 16, 16)))
    layer = cases.build(dict(kind='layer', name='win', shape=[1, 16, 16, 16], mode='fwdbwd'))
    layer.run('fwdbwd')
    assert isinstance(layer.module, WindowAttention4th)
    assert all(p.grad is not None for p in layer.module.parameters())
    from mmengine.registry import DefaultScope
    with DefaultScope.overwrite_default_scope('mmseg'):  # a family's non-public names build from any scope
        backbone = cases.build(dict(kind='backbone', name='windownet-t', batch=1, input_size=[64, 64], mode='fwd'))
    assert isinstance(backbone.module, WindowNet4th)
    backbone.run('fwd')
    cls, kwargs, shape, dry_shape = device_check.OPERATORS['win_windownet_stage1']
    module = device_check.build_operator(cls, kwargs, dry_shape, dry=True)
    assert module(torch.randn(dry_shape)).shape == dry_shape


def test_builtin_tables_follow_the_families():
    names = families.list_families()
    assert names[:3] == ['biformer', 'cloformer', 'stvit']
    assert sorted(FAMILIES) == sorted(n for n in names if families.get_family(n).converter is not None)
    assert set(ATTN_TYPES) >= {'BiLevelRoutingAttention', 'AttnConv', 'SuperTokenAttention'}
    assert 'GlobalAttentionLePE' not in ATTN_TYPES  # BiFormer's stage-4 attention is not a plug-in


def test_bad_registrations_are_refused():
    with pytest.raises(ValueError, match="'nope'.*biformer"):
        families.get_family('nope')
    with pytest.raises(KeyError, match='already registered'):
        families.register_family(FamilySpec(name='biformer', backbone=WindowNet4th))
    with pytest.raises(ValueError, match='lower-case'):
        FamilySpec(name='Bad', backbone=WindowNet4th)
    with pytest.raises(TypeError, match='FamilySpec'):
        families.register_family(dict(name='x'))
