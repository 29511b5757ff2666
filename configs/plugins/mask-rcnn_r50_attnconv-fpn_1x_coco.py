"""Mask R-CNN R-50 FPN 1x (mmdet's stock recipe) with ``SparseAttnFPN``: CloFormer's AttnConv on P4 and P5.

The neck is mmdet's FPN (same arguments, same weights layout) plus an identity-initialised ``SparseAttnBlock``
on the 1x1 laterals of levels 2 (stride 16) and 3 (stride 32), before the top-down path, which carries the
attended context down to P2/P3. Level 2: 4 local heads (7x7) + 4 global heads over 2x2-pooled keys; level 3:
2 local heads (9x9) + 6 global heads over all 25x42 positions (at 1333x800).
"""
_base_ = 'mmdet::mask_rcnn/mask-rcnn_r50_fpn_1x_coco.py'

custom_imports = dict(imports=['mmsparse'], allow_failed_imports=False)

model = dict(
    neck=dict(
        type='mmsparse.SparseAttnFPN',
        attn_levels=(2, 3),
        attn_cfg=[
            dict(type='AttnConv', num_heads=8, group_split=[4, 4], kernel_sizes=[7], window_size=2),
            dict(type='AttnConv', num_heads=8, group_split=[2, 6], kernel_sizes=[9], window_size=1),
        ]))
# base_batch_size: the recipe's total batch (the COCO 1x recipe: 8 GPUs x 2 images); on fewer GPUs, --auto-scale-lr
# multiplies the learning rate by (GPUs x images per GPU) / base_batch_size (docs/reproduce.md).
auto_scale_lr = dict(enable=False, base_batch_size=16)
