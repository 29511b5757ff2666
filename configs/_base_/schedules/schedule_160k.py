# 160k iterations; linear warmup over 1500 iterations (ratio 1e-6) composed with poly decay (power 1.0, to 0),
# both from iteration 0 (mmcv 1.x semantics). Optimizer: set optim_wrapper in the config.
train_cfg = dict(type='IterBasedTrainLoop', max_iters=160000, val_interval=16000)
val_cfg = dict(type='ValLoop')
test_cfg = dict(type='TestLoop')
param_scheduler = [
    dict(type='LinearLR', start_factor=1e-6, by_epoch=False, begin=0, end=1500),
    dict(type='PolyLR', power=1.0, eta_min=0.0, by_epoch=False, begin=0, end=160000)
]
default_hooks = dict(
    logger=dict(type='LoggerHook', interval=50, log_metric_by_epoch=False),
    checkpoint=dict(type='CheckpointHook', by_epoch=False, interval=16000),
    visualization=dict(type='SegVisualizationHook'))
# total batch of the recipes (8 GPUs x 2 images)
auto_scale_lr = dict(enable=False, base_batch_size=16)
