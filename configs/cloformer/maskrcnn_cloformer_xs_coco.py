"""Mask R-CNN 1x with a CloFormer-XS backbone on COCO.

Same standard recipe as ``maskrcnn_cloformer_xxs_coco.py`` (AdamW lr 1e-4, wd 0.05, ``norm`` decay 0, 1x,
8 GPUs x 2 images, AMP loss scale 512; the authors published no dense recipe). Drop path 0.06, CloFormer-XS's
ImageNet value.
"""
_base_ = './maskrcnn_cloformer_xxs_coco.py'

model = dict(
    backbone=dict(
        arch='xs',
        drop_path_rate=0.06,
        init_cfg=dict(checkpoint='checkpoints/cloformer_xs_in1k_mmsparse.pth')),
    neck=dict(in_channels=[48, 96, 160, 352]))
# base_batch_size: the recipe's total batch (the COCO 1x recipe: 8 GPUs x 2 images); on fewer GPUs, --auto-scale-lr
# multiplies the learning rate by (GPUs x images per GPU) / base_batch_size (docs/reproduce.md).
auto_scale_lr = dict(enable=False, base_batch_size=16)
