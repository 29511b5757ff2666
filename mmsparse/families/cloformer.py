"""CloFormer (Fan et al., 2023): AttnConv, a local context-aware gate beside pooled global attention."""
from mmsparse.converters import cloformer as converter
from mmsparse.models.backbones import CloFormer
from mmsparse.ops import AttnConv
from mmsparse.testing import official
from . import register_family
from .spec import FamilySpec, OperatorCase, OperatorSpec

_BENCH = dict(num_heads=4, group_split=[3, 1], kernel_sizes=[3], window_size=8)

ATTN_CONV = OperatorSpec(
    AttnConv, short='attnconv',
    # CloFormer's stage-3 split: half the heads local (7x7), half global over 2x2-pooled keys
    plugin_defaults=dict(num_heads=8, group_split=[4, 4], kernel_sizes=[7], window_size=2),
    bench_kwargs=_BENCH,
    device_cases=dict(attnconv_cloformer_s_stage1=OperatorCase(_BENCH, (2, 64, 200, 304), (1, 32, 20, 24))))

SPEC = register_family(FamilySpec(
    name='cloformer', backbone=CloFormer, operators=(ATTN_CONV, ), converter=converter,
    official=official.CLOFORMER_CLASSES,
    presets={f'cloformer-{k}': dict(arch=k) for k in ('xxs', 'xs', 's')},
    detectors=dict(maskrcnn_cloformer_s=('configs/cloformer/maskrcnn_cloformer_s_coco.py', 'cloformer-s')),
    tiny=dict(type='CloFormer',
              arch=dict(embed_dims=[16, 32, 32, 32], depths=[1, 2, 1, 1], num_heads=[2, 2, 2, 2],
                        group_splits=[[1, 1]] * 4, kernel_sizes=[[3]] * 4, window_sizes=[4, 2, 1, 1],
                        mlp_kernel_sizes=[3] * 4, mlp_ratios=[2] * 4)),
    tiny_input=(64, 64)))
