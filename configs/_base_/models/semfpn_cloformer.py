# Semantic FPN with CloFormer-XXS (the architecture of configs/cloformer/semfpn_cloformer_*_ade20k.py; those
# configs hold the training recipe). SyncBN; FPN 256 channels, 4 levels. Other sizes: override arch,
# drop_path_rate, init_cfg.checkpoint and neck.in_channels.
_base_ = './semfpn.py'
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
    neck=dict(in_channels=[32, 64, 128, 256], out_channels=256, num_outs=4))
