"""Semantic FPN 80k with a CloFormer-S backbone on ADE20K.

Same standard recipe as ``semfpn_cloformer_xxs_ade20k.py`` (AdamW lr 2e-4, wd 1e-4, 80k cosine, 8 GPUs x 4 images,
AMP loss scale 512; the authors published no dense recipe). Drop path 0.06, CloFormer-S's ImageNet value.
"""
_base_ = './semfpn_cloformer_xxs_ade20k.py'

model = dict(
    backbone=dict(
        arch='s',
        drop_path_rate=0.06,
        init_cfg=dict(checkpoint='checkpoints/cloformer_s_in1k_mmsparse.pth')),
    neck=dict(in_channels=[64, 128, 224, 448]))
# base_batch_size: the recipe's total batch (Semantic FPN 80k: 8 GPUs x 4 images); on fewer GPUs, --auto-scale-lr
# multiplies the learning rate by (GPUs x images per GPU) / base_batch_size (docs/reproduce.md).
auto_scale_lr = dict(enable=False, base_batch_size=32)
