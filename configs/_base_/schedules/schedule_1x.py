# 12 epochs; linear warmup over 500 iterations (ratio 0.001) composed with step decay x0.1 after epochs 8 and 11.
# Both schedulers start at iteration 0, as mmcv 1.x's warmup did. Optimizer: set optim_wrapper in the config.
train_cfg = dict(type='EpochBasedTrainLoop', max_epochs=12, val_interval=1)
val_cfg = dict(type='ValLoop')
test_cfg = dict(type='TestLoop')
param_scheduler = [
    dict(type='LinearLR', start_factor=0.001, by_epoch=False, begin=0, end=500),
    dict(type='MultiStepLR', begin=0, end=12, by_epoch=True, milestones=[8, 11], gamma=0.1)
]
# total batch of the recipes (8 GPUs x 2 images); enable with tools/train.py --auto-scale-lr
auto_scale_lr = dict(enable=False, base_batch_size=16)
