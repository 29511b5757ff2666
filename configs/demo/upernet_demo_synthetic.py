"""Demo: UPerNet with the same reduced BiFormer as the demo Mask R-CNN, trained from scratch (seeded) on the
synthetic ADE20K-format data (5 classes), at 96x96: the 160x160 images are scaled to x0.48-0.75 and cropped to
96x96, so most shapes are seen entirely (a crop that cuts a square makes it look like another shape) and an
iteration costs about half of a 128x128 one; 4000 iterations (README, "The demo", has the experiments).
Minutes on a 2-core CPU; tools/demo.py runs it.

    python tools/dataset_converters/make_synthetic.py --config configs/demo/upernet_demo_synthetic.py
    python tools/train.py configs/demo/upernet_demo_synthetic.py

Raw backbone outputs (``out_norm_cfg=None``), as in the demo detector.
"""
_base_ = [
    '../_base_/models/upernet.py', '../_base_/datasets/synthetic_ade20k.py', '../_base_/default_runtime_seg.py'
]
# the demo's own synthetic set: more images than the default data/synthetic_ade20k (64 / 16)
synthetic_data = dict(task='ade20k', out='data/demo_ade20k/ADEChallengeData2016', num_train=400, num_val=32)
input_size = (96, 96)
train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations', reduce_zero_label=True),
    # x0.48-0.75 of the 160x160 images, then a 96x96 crop (cuts a shape only in the larger scales)
    dict(type='RandomResize', scale=input_size, ratio_range=(0.8, 1.25), keep_ratio=True),
    dict(type='RandomCrop', crop_size=input_size, cat_max_ratio=0.75),
    dict(type='RandomFlip', prob=0.5),
    dict(type='PackSegInputs')
]
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='Resize', scale=input_size, keep_ratio=True),
    dict(type='LoadAnnotations', reduce_zero_label=True),  # metrics at the labels' own 160x160
    dict(type='PackSegInputs')
]
# tools/test.py --tta: ratios 0.5-1.75 of the test scale, each with and without a horizontal flip (as for ADE20K)
tta_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='TestTimeAug',
         transforms=[[dict(type='Resize', scale=(int(96 * r), int(96 * r)), keep_ratio=True)
                      for r in (0.5, 0.75, 1.0, 1.25, 1.5, 1.75)],
                     [dict(type='RandomFlip', prob=0., direction='horizontal'),
                      dict(type='RandomFlip', prob=1., direction='horizontal')],
                     [dict(type='LoadAnnotations', reduce_zero_label=True)], [dict(type='PackSegInputs')]])
]
train_dataloader = dict(dataset=dict(data_root=synthetic_data['out'], pipeline=train_pipeline))
val_dataloader = dict(dataset=dict(data_root=synthetic_data['out'], pipeline=test_pipeline))
test_dataloader = val_dataloader
widths = [32, 64, 128, 256]
norm_cfg = dict(type='BN', requires_grad=True)
model = dict(
    data_preprocessor=dict(size=input_size),  # pads the (up to 96x96) inputs
    backbone=dict(
        _delete_=True,
        type='mmsparse.BiFormer',
        arch=dict(embed_dims=widths, depths=[1, 1, 2, 1], head_dim=32),
        n_win=4,
        topks=(1, 2, 4, -2),
        out_norm_cfg=None,
        drop_path_rate=0.),
    # OHEM: background is 82 % of the pixels and triangles 1.9 %; mmseg's class_weight fails on ignored pixels
    decode_head=dict(in_channels=widths, channels=64, num_classes=5, norm_cfg=norm_cfg,
                     sampler=dict(type='OHEMPixelSampler', thresh=0.7, min_kept=10000)),
    auxiliary_head=dict(in_channels=widths[2], channels=32, num_classes=5, norm_cfg=norm_cfg))
max_iters = 4000
train_cfg = dict(type='IterBasedTrainLoop', max_iters=max_iters, val_interval=max_iters)
val_cfg = dict(type='ValLoop')
test_cfg = dict(type='TestLoop')
optim_wrapper = dict(
    type='OptimWrapper',
    optimizer=dict(type='AdamW', lr=2e-3, weight_decay=0.01),
    paramwise_cfg=dict(custom_keys={'norm': dict(decay_mult=0.)}),
    clip_grad=dict(max_norm=10.0))
param_scheduler = [
    dict(type='LinearLR', start_factor=0.01, by_epoch=False, begin=0, end=50),
    dict(type='PolyLR', power=1.0, eta_min=1e-5, by_epoch=False, begin=0, end=max_iters)
]
default_hooks = dict(
    logger=dict(type='LoggerHook', interval=20, log_metric_by_epoch=False),
    checkpoint=dict(type='CheckpointHook', by_epoch=False, interval=100, max_keep_ckpts=2))
randomness = dict(seed=0, deterministic=False)  # reproducible runs; --resume continues the RNG streams
# base_batch_size: the recipe's total batch (the demo trains on 1 process x 4 images); on fewer GPUs, --auto-scale-lr
# multiplies the learning rate by (GPUs x images per GPU) / base_batch_size (docs/reproduce.md).
auto_scale_lr = dict(enable=False, base_batch_size=4)
