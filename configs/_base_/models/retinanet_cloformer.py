# RetinaNet + FPN with CloFormer-XXS (the architecture of configs/cloformer/retinanet_cloformer_*_coco.py; those
# configs hold the training recipe). SyncBN; stages 2-4 into the FPN (start_level 0, extra convs on the input,
# 5 levels). Other sizes: override arch, drop_path_rate, init_cfg.checkpoint and neck.in_channels.
_base_ = './retinanet_fpn.py'
model = dict(
    backbone=dict(
        _delete_=True,
        type='mmsparse.CloFormer',
        arch='xxs',
        drop_path_rate=0.0,
        out_indices=(1, 2, 3),
        norm_cfg=dict(type='SyncBN', requires_grad=True),
        init_cfg=dict(type='Pretrained', checkpoint='checkpoints/cloformer_xxs_in1k_mmsparse.pth',
                      prefix='backbone.')),
    neck=dict(in_channels=[64, 128, 256], start_level=0, add_extra_convs='on_input', num_outs=5))
