"""BiFormer (Zhu et al., CVPR 2023): Bi-Level Routing Attention, and global attention in stage 4."""
from mmsparse.converters import biformer as converter
from mmsparse.models.backbones import BiFormer
from mmsparse.ops import BiLevelRoutingAttention, GlobalAttentionLePE
from mmsparse.testing import official
from . import register_family
from .spec import FamilySpec, OperatorCase, OperatorSpec

BRA = OperatorSpec(
    BiLevelRoutingAttention, short='bra',
    # auto_pad: a plug-in sees whatever map size the detector produces
    plugin_defaults=dict(num_heads=8, n_win=7, topk=4, auto_pad=True),
    bench_kwargs=dict(num_heads=2, n_win=16, topk=1, auto_pad=True),
    device_cases=dict(
        bra_biformer_s_stage1=OperatorCase(dict(num_heads=2, n_win=16, topk=1, auto_pad=True), (2, 64, 200, 304),
                                           (1, 32, 20, 24)),
        bra_biformer_s_stage3=OperatorCase(dict(num_heads=8, n_win=16, topk=16, auto_pad=True), (2, 256, 50, 76),
                                           (1, 64, 10, 12))))
#: stage 4 of BiFormer: dense, nothing routed; neither a plug-in nor drawn
GLOBAL = OperatorSpec(GlobalAttentionLePE, short='global_lepe')

SPEC = register_family(FamilySpec(
    name='biformer', backbone=BiFormer, operators=(BRA, GLOBAL), converter=converter,
    official=official.BIFORMER_CLASSES,
    presets={f'biformer-{k[0]}': dict(arch=k, n_win=16) for k in ('tiny', 'small', 'base')},
    detectors=dict(maskrcnn_biformer_s=('configs/biformer/maskrcnn_biformer_s_coco.py', 'biformer-s')),
    tiny=dict(type='BiFormer', arch=dict(embed_dims=[16, 32, 64, 64], depths=[1, 2, 1, 1], head_dim=16), n_win=2,
              topks=(1, 2, 2, -2)),
    tiny_input=(64, 64)))
