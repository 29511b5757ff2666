# Semantic FPN with BiFormer-S (the architecture of configs/biformer/semfpn_biformer_*_ade20k.py; those configs
# hold the training recipe). n_win 8 for 512x512 crops, SyncBN stem/downsample norms that train; FPN 256
# channels, 4 levels; FPNHead 128 channels, dropout 0.1. Other sizes: override arch, drop_path_rate,
# init_cfg.checkpoint and neck.in_channels.
_base_ = './semfpn.py'
model = dict(
    backbone=dict(
        _delete_=True,
        type='mmsparse.BiFormer',
        arch='small',
        n_win=8,
        topks=[1, 4, 16, -2],
        auto_pad=True,
        drop_path_rate=0.15,
        out_indices=(0, 1, 2, 3),
        norm_cfg=dict(type='SyncBN', requires_grad=True),
        norm_eval=False,
        out_norm_cfg=dict(type='LN2d', eps=1e-6),
        with_cp=False,
        init_cfg=dict(
            type='Pretrained', checkpoint='checkpoints/biformer_small_in1k_mmsparse.pth', prefix='backbone.')),
    neck=dict(in_channels=[64, 128, 256, 512], out_channels=256, num_outs=4),
    decode_head=dict(channels=128, dropout_ratio=0.1))
