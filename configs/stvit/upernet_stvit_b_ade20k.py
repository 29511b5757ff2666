"""upernet_stvit_s_ade20k.py with STViT-B (drop path 0.3); same recipe and mmsparse choices."""
_base_ = './upernet_stvit_s_ade20k.py'
model = dict(
    backbone=dict(
        arch='base',
        drop_path_rate=0.3,
        init_cfg=dict(type='Pretrained', checkpoint='checkpoints/stvit_b_in1k_mmsparse.pth', prefix='backbone.')),
    decode_head=dict(in_channels=[96, 192, 384, 512]),
    auxiliary_head=dict(in_channels=384))
