"""STViT (Huang et al., CVPR 2023): Super Token Attention."""
from mmsparse.converters import stvit as converter
from mmsparse.models.backbones import STViT
from mmsparse.ops import SuperTokenAttention
from mmsparse.testing import official
from . import register_family
from .spec import FamilySpec, OperatorCase, OperatorSpec

STA = OperatorSpec(
    SuperTokenAttention, short='sta',
    plugin_defaults=dict(num_heads=8, stoken_size=4),
    bench_kwargs=dict(num_heads=1, stoken_size=8),
    device_cases=dict(sta_stvit_s_stage1=OperatorCase(dict(num_heads=1, stoken_size=8), (2, 64, 200, 304),
                                                      (1, 16, 20, 24))))

SPEC = register_family(FamilySpec(
    name='stvit', backbone=STViT, operators=(STA, ), converter=converter, official=official.STVIT_CLASSES,
    presets={f'stvit-{k[0]}': dict(arch=k) for k in ('small', 'base')},
    detectors=dict(maskrcnn_stvit_s=('configs/stvit/maskrcnn_stvit_s_coco.py', 'stvit-s')),
    tiny=dict(type='STViT', arch=dict(embed_dims=[16, 32, 32, 32], depths=[1, 2, 1, 1], num_heads=[1, 2, 2, 2]),
              stoken_size=[2, 2, 1, 1], mlp_ratio=2.),
    tiny_input=(64, 64)))
