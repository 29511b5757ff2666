# Runtime for mmseg configs: mmseg's stock runtime, iteration-based logging/checkpointing, mmsparse registration.
_base_ = 'mmseg::_base_/default_runtime.py'
custom_imports = dict(imports=['mmsparse'], allow_failed_imports=False)
default_scope = 'mmseg'
default_hooks = dict(
    timer=dict(type='IterTimerHook'),
    logger=dict(type='LoggerHook', interval=50, log_metric_by_epoch=False),
    param_scheduler=dict(type='ParamSchedulerHook'),
    checkpoint=dict(type='CheckpointHook', by_epoch=False, interval=16000),
    sampler_seed=dict(type='DistSamplerSeedHook'),
    visualization=dict(type='SegVisualizationHook'))
