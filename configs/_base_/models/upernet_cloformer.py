# UPerNet with CloFormer-XXS (the architecture of configs/cloformer/upernet_cloformer_*_ade20k.py; those configs
# hold the training recipe). SyncBN; auxiliary FCN head on stage 3. Other sizes: override arch, drop_path_rate,
# init_cfg.checkpoint, decode_head.in_channels and auxiliary_head.in_channels.
_base_ = './upernet.py'
model = dict(
    backbone=dict(
        _delete_=True,
        type='mmsparse.CloFormer',
        arch='xxs',
        drop_path_rate=0.0,
        out_indices=(0, 1, 2, 3),
        norm_cfg=dict(type='SyncBN', requires_grad=True),
        init_cfg=dict(type='Pretrained', checkpoint='checkpoints/cloformer_xxs_in1k_mmsparse.pth',
                      prefix='backbone.')),
    decode_head=dict(in_channels=[32, 64, 128, 256]),
    auxiliary_head=dict(in_channels=128, in_index=2))
