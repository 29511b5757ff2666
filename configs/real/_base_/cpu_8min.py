# The runtime and schedule of configs/real/: one CPU run of 8 minutes on one core, training from scratch.
# AdamW with a 50-iteration warm-up and a cosine decay over max_iters, which each config sets from its measured
# speed (restating train_cfg, the cosine's T_max / end and the checkpoint interval); validation and a checkpoint
# at the end only. Seeded.
_base_ = '../../_base_/default_runtime_det.py'
max_iters = 1000  # each config sets its own, from its measured iterations per second
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
default_hooks = dict(
    logger=dict(type='LoggerHook', interval=20),
    checkpoint=dict(type='CheckpointHook', by_epoch=False, interval=max_iters, max_keep_ckpts=1, save_last=True))
log_processor = dict(by_epoch=False)
randomness = dict(seed=0, deterministic=False)
