# Mask R-CNN + FPN with CloFormer-XXS (the architecture of configs/cloformer/maskrcnn_cloformer_*_coco.py; those
# configs hold the training recipe). SyncBN, all four stages into the FPN. Other sizes: override arch,
# drop_path_rate, init_cfg.checkpoint and neck.in_channels.
_base_ = './mask_rcnn_fpn.py'
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
    neck=dict(in_channels=[32, 64, 128, 256]))
