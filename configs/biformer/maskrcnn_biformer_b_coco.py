"""Mask R-CNN + FPN with a BiFormer-B backbone, COCO 2017, 1x: the BiFormer-S recipe of maskrcnn_biformer_s_coco.py
with the B backbone.

Differences from S in the authors' recipe (maskrcnn.1x.biformer_base.py): arch 'base', drop path 0.3, stage widths
96/192/384/768. Backbone weights:
  python tools/model_converters/official2mmsparse.py biformer biformer_base_best.pth \
      checkpoints/biformer_base_in1k_mmsparse.pth
"""
_base_ = './maskrcnn_biformer_s_coco.py'
model = dict(
    backbone=dict(
        arch='base',
        drop_path_rate=0.3,
        init_cfg=dict(checkpoint='checkpoints/biformer_base_in1k_mmsparse.pth')),
    neck=dict(in_channels=[96, 192, 384, 768]))
# base_batch_size: the recipe's total batch (the COCO 1x recipe: 8 GPUs x 2 images); on fewer GPUs, --auto-scale-lr
# multiplies the learning rate by (GPUs x images per GPU) / base_batch_size (docs/reproduce.md).
auto_scale_lr = dict(enable=False, base_batch_size=16)
