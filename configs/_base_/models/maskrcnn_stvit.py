# Mask R-CNN + FPN with STViT-S (the architecture of configs/stvit/maskrcnn_stvit_*_coco.py; those configs hold
# the training recipe). Super tokens [8, 4, 2, 1] (stage 3 uses 2x2 super tokens instead of global attention at
# detection resolution), BN statistics frozen, one LayerNorm2d per output. Other sizes: override arch,
# drop_path_rate, init_cfg.checkpoint and neck.in_channels.
_base_ = './mask_rcnn_fpn.py'
model = dict(
    backbone=dict(
        _delete_=True,
        type='mmsparse.STViT',
        arch='small',
        stoken_size=[8, 4, 2, 1],
        drop_path_rate=0.2,
        out_indices=(0, 1, 2, 3),
        norm_cfg=dict(type='BN', requires_grad=True),
        norm_eval=True,
        out_norm_cfg=dict(type='LN2d', eps=1e-6),
        with_cp=False,
        init_cfg=dict(type='Pretrained', checkpoint='checkpoints/stvit_s_in1k_mmsparse.pth', prefix='backbone.')),
    neck=dict(in_channels=[64, 128, 320, 512]))
