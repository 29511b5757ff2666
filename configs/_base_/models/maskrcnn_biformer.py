# Mask R-CNN + FPN with BiFormer-S (the architecture of configs/biformer/maskrcnn_biformer_*_coco.py; those
# configs hold the training recipe). n_win 16 for ~1333x800 inputs, BN statistics frozen, one LayerNorm2d per
# output. Other sizes: override arch, drop_path_rate, init_cfg.checkpoint and neck.in_channels.
_base_ = './mask_rcnn_fpn.py'
model = dict(
    backbone=dict(
        _delete_=True,
        type='mmsparse.BiFormer',
        arch='small',
        n_win=16,
        topks=[1, 4, 16, -2],
        auto_pad=True,
        drop_path_rate=0.2,
        out_indices=(0, 1, 2, 3),
        norm_cfg=dict(type='BN', requires_grad=True),
        norm_eval=True,
        out_norm_cfg=dict(type='LN2d', eps=1e-6),
        with_cp=False,
        init_cfg=dict(
            type='Pretrained', checkpoint='checkpoints/biformer_small_in1k_mmsparse.pth', prefix='backbone.')),
    neck=dict(in_channels=[64, 128, 256, 512]))
