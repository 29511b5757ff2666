# Semantic FPN with STViT-S (the architecture of configs/stvit/semfpn_stvit_*_ade20k.py; those configs hold the
# training recipe). Super tokens [8, 4, 1, 1] (stage 3 keeps global attention at 512x512), SyncBN norms that
# train. Other sizes: override arch, drop_path_rate, init_cfg.checkpoint and neck.in_channels.
_base_ = './semfpn.py'
model = dict(
    backbone=dict(
        _delete_=True,
        type='mmsparse.STViT',
        arch='small',
        stoken_size=[8, 4, 1, 1],
        drop_path_rate=0.2,
        out_indices=(0, 1, 2, 3),
        norm_cfg=dict(type='SyncBN', requires_grad=True),
        norm_eval=False,
        out_norm_cfg=dict(type='LN2d', eps=1e-6),
        with_cp=False,
        init_cfg=dict(type='Pretrained', checkpoint='checkpoints/stvit_s_in1k_mmsparse.pth', prefix='backbone.')),
    neck=dict(in_channels=[64, 128, 320, 512]))
