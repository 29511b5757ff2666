"""UPerNet 160k with a CloFormer-XS backbone on ADE20K.

Same standard recipe as ``upernet_cloformer_xxs_ade20k.py`` (AdamW lr 6e-5, wd 0.01, ``norm`` decay 0, 160k
poly, 8 GPUs x 2 images, AMP loss scale 512; the authors published no dense recipe). Drop path 0.06,
CloFormer-XS's ImageNet value.
"""
_base_ = './upernet_cloformer_xxs_ade20k.py'

model = dict(
    backbone=dict(
        arch='xs',
        drop_path_rate=0.06,
        init_cfg=dict(checkpoint='checkpoints/cloformer_xs_in1k_mmsparse.pth')),
    decode_head=dict(in_channels=[48, 96, 160, 352]),
    auxiliary_head=dict(in_channels=160))
# base_batch_size: the recipe's total batch (the UPerNet 160k recipe: 8 GPUs x 2 images); on fewer GPUs, --auto-scale-lr
# multiplies the learning rate by (GPUs x images per GPU) / base_batch_size (docs/reproduce.md).
auto_scale_lr = dict(enable=False, base_batch_size=16)
