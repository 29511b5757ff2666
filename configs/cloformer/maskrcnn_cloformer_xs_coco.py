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
