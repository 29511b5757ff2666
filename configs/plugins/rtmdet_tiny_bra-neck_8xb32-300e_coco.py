"""RTMDet-tiny (mmdet's stock recipe) with Bi-Level Routing Attention on the deepest neck input.

This is what the YOLO write-ups do with these modules: one attention layer on the stride-32 feature right
before the PAN neck (where a YOLO has SPPF). The neck becomes a list, built by mmengine as an ``nn.Sequential``:
``MultiLevelSparseAttn`` (identity at initialisation) on C5 (384 channels, 20x20 at 640x640; 4x4 regions of
5x5 tokens, top-4), then RTMDet-tiny's own ``CSPNeXtPAFPN``, unchanged.
"""
_base_ = 'mmdet::rtmdet/rtmdet_tiny_8xb32-300e_coco.py'

custom_imports = dict(imports=['mmsparse'], allow_failed_imports=False)

in_channels = [96, 192, 384]
model = dict(neck=[
    dict(type='mmsparse.MultiLevelSparseAttn', in_channels=in_channels, attn_levels=(2, ),
         attn_cfg=dict(type='BiLevelRoutingAttention', num_heads=8, n_win=4, topk=4)),
    # RTMDet-tiny's neck as mmdet's rtmdet_l / rtmdet_tiny configs define it
    dict(type='CSPNeXtPAFPN', in_channels=in_channels, out_channels=96, num_csp_blocks=1, expand_ratio=0.5,
         norm_cfg=dict(type='SyncBN'), act_cfg=dict(type='SiLU', inplace=True)),
])
# base_batch_size: the recipe's total batch (mmdet's RTMDet recipe: 8 GPUs x 32 images); on fewer GPUs, --auto-scale-lr
# multiplies the learning rate by (GPUs x images per GPU) / base_batch_size (docs/reproduce.md).
auto_scale_lr = dict(enable=False, base_batch_size=256)
