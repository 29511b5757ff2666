# RetinaNet + FPN with BiFormer-S (the architecture of configs/biformer/retinanet_biformer_*_coco.py; those
# configs hold the training recipe). FPN from stride 8 (start_level 1, extra convs on the input, 5 levels), so
# the stride-4 output norm gets no gradient. Other sizes: override arch, drop_path_rate, init_cfg.checkpoint and
# neck.in_channels.
_base_ = './retinanet_fpn.py'
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
    neck=dict(in_channels=[64, 128, 256, 512], start_level=1, add_extra_convs='on_input', num_outs=5))
