"""UPerNet with a BiFormer-B backbone, ADE20K, 160k: the BiFormer-S recipe of upernet_biformer_s_ade20k.py with the B
backbone.

Differences from S in the authors' recipe (upernet.biformer_base.py): arch 'base', drop path 0.4, stage widths
96/192/384/768. Backbone weights:
  python tools/model_converters/official2mmsparse.py biformer biformer_base_best.pth \
      checkpoints/biformer_base_in1k_mmsparse.pth
"""
_base_ = './upernet_biformer_s_ade20k.py'
model = dict(
    backbone=dict(
        arch='base',
        drop_path_rate=0.4,
        init_cfg=dict(checkpoint='checkpoints/biformer_base_in1k_mmsparse.pth')),
    decode_head=dict(in_channels=[96, 192, 384, 768]),
    auxiliary_head=dict(in_channels=384))
# base_batch_size: the recipe's total batch (the UPerNet 160k recipe: 8 GPUs x 2 images); on fewer GPUs, --auto-scale-lr
# multiplies the learning rate by (GPUs x images per GPU) / base_batch_size (docs/reproduce.md).
auto_scale_lr = dict(enable=False, base_batch_size=16)
