"""UPerNet R-50 160k on ADE20K (mmseg's stock recipe, 4 GPUs x 4 crops of 512x512) with a ``SparseAttnFPN`` neck
carrying STViT's Super Token Attention on its two coarsest levels.

The neck (FPN, 256 channels, 4 outputs) sits between the ResNet and the UPerHead, whose inputs become 4 x 256
channels; STA runs on the laterals of levels 2 (32x32 on a 512 crop, 4x4 super tokens -> 8x8 grid) and 3 (16x16,
2x2 super tokens -> 8x8 grid), identity at initialisation.
"""
_base_ = 'mmseg::upernet/upernet_r50_4xb4-160k_ade20k-512x512.py'

custom_imports = dict(imports=['mmsparse'], allow_failed_imports=False)

fpn_channels = 256
model = dict(
    neck=dict(
        type='mmsparse.SparseAttnFPN',
        in_channels=[256, 512, 1024, 2048],
        out_channels=fpn_channels,
        num_outs=4,
        attn_levels=(2, 3),
        attn_cfg=[
            dict(type='SuperTokenAttention', num_heads=8, stoken_size=4),
            dict(type='SuperTokenAttention', num_heads=8, stoken_size=2),
        ]),
    decode_head=dict(in_channels=[fpn_channels] * 4),
    auxiliary_head=dict(in_channels=fpn_channels))
# base_batch_size: the recipe's total batch (mmseg's recipe: 4 GPUs x 4 images); on fewer GPUs, --auto-scale-lr
# multiplies the learning rate by (GPUs x images per GPU) / base_batch_size (docs/reproduce.md).
auto_scale_lr = dict(enable=False, base_batch_size=16)
