# UPerNet with BiFormer-S (the architecture of configs/biformer/upernet_biformer_*_ade20k.py; those configs hold
# the training recipe). n_win 8 for 512x512 crops, SyncBN stem/downsample norms that train; auxiliary FCN head
# on stage 3. Other sizes: override arch, drop_path_rate, init_cfg.checkpoint, decode_head.in_channels and
# auxiliary_head.in_channels.
_base_ = './upernet.py'
model = dict(
    backbone=dict(
        _delete_=True,
        type='mmsparse.BiFormer',
        arch='small',
        n_win=8,
        topks=[1, 4, 16, -2],
        auto_pad=True,
        drop_path_rate=0.3,
        out_indices=(0, 1, 2, 3),
        norm_cfg=dict(type='SyncBN', requires_grad=True),
        norm_eval=False,
        out_norm_cfg=dict(type='LN2d', eps=1e-6),
        with_cp=False,
        init_cfg=dict(
            type='Pretrained', checkpoint='checkpoints/biformer_small_in1k_mmsparse.pth', prefix='backbone.')),
    decode_head=dict(in_channels=[64, 128, 256, 512], channels=512),
    auxiliary_head=dict(in_channels=256, in_index=2))
