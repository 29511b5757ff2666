"""RetinaNet R-50 FPN 1x (mmdet's stock recipe) with CloFormer's AttnConv plugged into ResNet stages 3-4.

Every bottleneck of stages 3 and 4 gets a ``SparseAttnBlock`` after its 3x3 conv (256 / 512 channels), identity
at initialisation. The head splits follow CloFormer's own last two stages: stage 3 has 4 local heads (7x7
depthwise) and 4 global heads over 2x2-pooled keys (25x42 = 1050 keys at 1333x800); stage 4 has 4 local heads
(9x9) and 12 global heads over the unpooled 25x42 map.
"""
_base_ = 'mmdet::retinanet/retinanet_r50_fpn_1x_coco.py'

custom_imports = dict(imports=['mmsparse'], allow_failed_imports=False)

stage3, stage4 = (False, False, True, False), (False, False, False, True)
model = dict(
    backbone=dict(plugins=[
        dict(cfg=dict(type='mmsparse.SparseAttnBlock',
                      attn_cfg=dict(type='AttnConv', num_heads=8, group_split=[4, 4], kernel_sizes=[7],
                                    window_size=2)),
             stages=stage3, position='after_conv2'),
        dict(cfg=dict(type='mmsparse.SparseAttnBlock',
                      attn_cfg=dict(type='AttnConv', num_heads=16, group_split=[4, 12], kernel_sizes=[9],
                                    window_size=1)),
             stages=stage4, position='after_conv2'),
    ]))
# base_batch_size: the recipe's total batch (the COCO 1x recipe: 8 GPUs x 2 images); on fewer GPUs, --auto-scale-lr
# multiplies the learning rate by (GPUs x images per GPU) / base_batch_size (docs/reproduce.md).
auto_scale_lr = dict(enable=False, base_batch_size=16)
