"""RetinaNet R-50 FPN 1x (mmdet's stock recipe) with STViT's Super Token Attention plugged into ResNet stages 3-4.

Every bottleneck of stages 3 and 4 gets a ``SparseAttnBlock`` after its 3x3 conv (256 / 512 channels), identity
at initialisation. Super tokens of 4x4 pixels in stage 3 and 2x2 in stage 4 give the same 13x21 grid of 273
super tokens at 1333x800 (STViT itself uses 1x1, i.e. global attention, in stages 3-4 at 224x224, where those
maps have 196 and 49 tokens; at detection resolution that would be 4200 and 1050).
"""
_base_ = 'mmdet::retinanet/retinanet_r50_fpn_1x_coco.py'

custom_imports = dict(imports=['mmsparse'], allow_failed_imports=False)

stage3, stage4 = (False, False, True, False), (False, False, False, True)
model = dict(
    backbone=dict(plugins=[
        dict(cfg=dict(type='mmsparse.SparseAttnBlock',
                      attn_cfg=dict(type='SuperTokenAttention', num_heads=8, stoken_size=4)),
             stages=stage3, position='after_conv2'),
        dict(cfg=dict(type='mmsparse.SparseAttnBlock',
                      attn_cfg=dict(type='SuperTokenAttention', num_heads=8, stoken_size=2)),
             stages=stage4, position='after_conv2'),
    ]))
# base_batch_size: the recipe's total batch (the COCO 1x recipe: 8 GPUs x 2 images); on fewer GPUs, --auto-scale-lr
# multiplies the learning rate by (GPUs x images per GPU) / base_batch_size (docs/reproduce.md).
auto_scale_lr = dict(enable=False, base_batch_size=16)
