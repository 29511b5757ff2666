# UPerNet with STViT-S (the architecture of configs/stvit/upernet_stvit_*_ade20k.py; those configs hold the
# training recipe). Super tokens [8, 4, 1, 1] (stage 3 keeps global attention at 512x512), SyncBN norms that
# train; auxiliary FCN head on stage 3. Other sizes: override arch, drop_path_rate, init_cfg.checkpoint,
# decode_head.in_channels and auxiliary_head.in_channels.
_base_ = './upernet.py'
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
    decode_head=dict(in_channels=[64, 128, 320, 512]),
    auxiliary_head=dict(in_channels=320, in_index=2))
