# 80k iterations; linear warmup over 1000 iterations (ratio 0.1) composed with cosine decay to 1e-8 x base lr,
# both from iteration 0 (mmcv 1.x semantics). Optimizer: set optim_wrapper in the config.
train_cfg = dict(type='IterBasedTrainLoop', max_iters=80000, val_interval=4000)
val_cfg = dict(type='ValLoop')
test_cfg = dict(type='TestLoop')
param_scheduler = [
    dict(type='LinearLR', start_factor=0.1, by_epoch=False, begin=0, end=1000),
    dict(type='CosineAnnealingLR', T_max=80000, eta_min_ratio=1e-8, by_epoch=False, begin=0, end=80000)
]
default_hooks = dict(
    logger=dict(type='LoggerHook', interval=50, log_metric_by_epoch=False),
    checkpoint=dict(type='CheckpointHook', by_epoch=False, interval=4000),
    visualization=dict(type='SegVisualizationHook'))
# total batch of the recipes (8 GPUs x 4 images)
auto_scale_lr = dict(enable=False, base_batch_size=32)
