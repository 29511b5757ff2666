"""upernet_stvit_s_ade20k.py with STViT-L (drop path 0.4); same recipe and mmsparse choices."""
_base_ = './upernet_stvit_s_ade20k.py'
model = dict(
    backbone=dict(
        arch='large',
        drop_path_rate=0.4,
        init_cfg=dict(checkpoint='checkpoints/stvit_l_in1k_mmsparse.pth')),
    decode_head=dict(in_channels=[96, 192, 448, 640]),
    auxiliary_head=dict(in_channels=448))
# base_batch_size: the recipe's total batch (the UPerNet 160k recipe: 8 GPUs x 2 images); on fewer GPUs, --auto-scale-lr
# multiplies the learning rate by (GPUs x images per GPU) / base_batch_size (docs/reproduce.md).
auto_scale_lr = dict(enable=False, base_batch_size=16)
