"""Demo: Mask R-CNN with a reduced BiFormer ("nano": widths 32-256, one block per stage but two in stage 3),
trained from scratch (seeded) on the synthetic COCO-format data of ``synthetic_data`` below. Minutes on a 2-core
CPU; tools/demo.py generates the data, trains, evaluates and draws the results.

    python tools/dataset_converters/make_synthetic.py --config configs/demo/maskrcnn_demo_synthetic.py
    python tools/train.py configs/demo/maskrcnn_demo_synthetic.py

The backbone returns its raw stage outputs (``out_norm_cfg=None``); with BiFormer's default output LayerNorms
this detector learns as well (configs/biformer/README.md, "Training from scratch").
"""
_base_ = [
    '../_base_/models/mask_rcnn_fpn.py', '../_base_/datasets/synthetic_coco_instance.py',
    '../_base_/default_runtime_det.py'
]
# the demo's own synthetic set: more images than the default data/synthetic_coco (64 / 16)
synthetic_data = dict(task='coco', out='data/demo_coco', num_train=400, num_val=32)
data_root = synthetic_data['out'] + '/'
train_dataloader = dict(dataset=dict(data_root=data_root))
val_dataloader = dict(dataset=dict(data_root=data_root))
test_dataloader = val_dataloader
val_evaluator = dict(ann_file=data_root + 'annotations/instances_val2017.json')
test_evaluator = val_evaluator
widths = [32, 64, 128, 256]
model = dict(
    backbone=dict(
        _delete_=True,
        type='mmsparse.BiFormer',
        arch=dict(embed_dims=widths, depths=[1, 1, 2, 1], head_dim=32),
        n_win=4,
        topks=(1, 2, 4, -2),
        out_norm_cfg=None,
        drop_path_rate=0.,
        norm_eval=False),
    neck=dict(in_channels=widths, out_channels=64),
    rpn_head=dict(in_channels=64, feat_channels=64),
    roi_head=dict(
        bbox_roi_extractor=dict(out_channels=64),
        bbox_head=dict(in_channels=64, fc_out_channels=256, num_classes=4),
        mask_roi_extractor=dict(out_channels=64),
        mask_head=dict(in_channels=64, conv_out_channels=64, num_classes=4)))
max_iters = 600
train_cfg = dict(type='IterBasedTrainLoop', max_iters=max_iters, val_interval=max_iters)
val_cfg = dict(type='ValLoop')
test_cfg = dict(type='TestLoop')
optim_wrapper = dict(
    type='OptimWrapper',
    optimizer=dict(type='AdamW', lr=1e-3, weight_decay=0.05),
    paramwise_cfg=dict(custom_keys={'norm': dict(decay_mult=0.)}),
    clip_grad=dict(max_norm=10.0))
param_scheduler = [
    dict(type='LinearLR', start_factor=0.01, by_epoch=False, begin=0, end=50),
    dict(type='CosineAnnealingLR', T_max=max_iters, eta_min_ratio=0.01, by_epoch=False, begin=0, end=max_iters)
]
train_dataloader.update(sampler=dict(type='InfiniteSampler', shuffle=True), batch_sampler=None)
default_hooks = dict(
    logger=dict(type='LoggerHook', interval=20),
    checkpoint=dict(type='CheckpointHook', by_epoch=False, interval=100, max_keep_ckpts=2))
log_processor = dict(by_epoch=False)
randomness = dict(seed=0, deterministic=False)  # reproducible runs; --resume continues the RNG streams
# base_batch_size: the recipe's total batch (the demo trains on 1 process x 2 images); on fewer GPUs, --auto-scale-lr
# multiplies the learning rate by (GPUs x images per GPU) / base_batch_size (docs/reproduce.md).
auto_scale_lr = dict(enable=False, base_batch_size=2)
