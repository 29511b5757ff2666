"""RetinaNet R-50 FPN 1x (mmdet's stock recipe) with Bi-Level Routing Attention plugged into ResNet stages 3-4.

Every bottleneck of stages 3 (conv4_x, stride 16) and 4 (conv5_x, stride 32) gets a ``SparseAttnBlock`` after
its 3x3 conv (``after_conv2``: 256 / 512 channels rather than 1024 / 2048 after conv3). The blocks start as the
identity (zero layer scales), so the torchvision-pretrained ResNet keeps its features at step 0.

Regions at 1333x800 (padded to 1344x800): stage 3 is 50x84, auto-padded to 56x88 = 8x8 regions of 7x11 tokens,
each query attends to its top-8 regions (616 keys); stage 4 is 25x42 -> 28x44 = 4x4 regions of 7x11, top-4.
"""
_base_ = 'mmdet::retinanet/retinanet_r50_fpn_1x_coco.py'

custom_imports = dict(imports=['mmsparse'], allow_failed_imports=False)

stage3, stage4 = (False, False, True, False), (False, False, False, True)
model = dict(
    backbone=dict(plugins=[
        dict(cfg=dict(type='mmsparse.SparseAttnBlock',
                      attn_cfg=dict(type='BiLevelRoutingAttention', num_heads=8, n_win=8, topk=8)),
             stages=stage3, position='after_conv2'),
        dict(cfg=dict(type='mmsparse.SparseAttnBlock',
                      attn_cfg=dict(type='BiLevelRoutingAttention', num_heads=8, n_win=4, topk=4)),
             stages=stage4, position='after_conv2'),
    ]))
# base_batch_size: the recipe's total batch (the COCO 1x recipe: 8 GPUs x 2 images); on fewer GPUs, --auto-scale-lr
# multiplies the learning rate by (GPUs x images per GPU) / base_batch_size (docs/reproduce.md).
auto_scale_lr = dict(enable=False, base_batch_size=16)
