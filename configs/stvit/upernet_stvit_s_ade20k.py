"""UPerNet with an STViT-S backbone, ADE20K, 512x512 crops, 160k iterations, 8 GPUs x 2 images.

Standard hierarchical-transformer recipe (mmseg's Swin UPerNet), not the authors' (none published): AdamW
lr 6e-5, betas (0.9, 0.999), weight decay 0.01 (0 for parameters whose name contains 'norm'), linear warmup
1500 iterations (ratio 1e-6) composed with poly decay (power 1) to 0, fp32, batch 16 in total; auxiliary
FCN head on stage 3 (loss weight 0.4, from the base).

mmsparse choices: the trained super-token sizes [8, 4, 1, 1] (stage 3 is 32x32 = 1,024 tokens at 512x512,
affordable with global attention), SyncBN in the backbone (mmseg's practice for BN backbones: 16 images per
BN), per-output LN2d. Weights converted with tools/model_converters/official2mmsparse.py.
"""
_base_ = [
    '../_base_/models/upernet_stvit.py', '../_base_/datasets/ade20k.py',
    '../_base_/schedules/schedule_160k.py', '../_base_/default_runtime_seg.py'
]
train_dataloader = dict(batch_size=2, num_workers=4)
optim_wrapper = dict(
    type='OptimWrapper',
    optimizer=dict(type='AdamW', lr=6e-5, betas=(0.9, 0.999), weight_decay=0.01),
    paramwise_cfg=dict(custom_keys={'norm': dict(decay_mult=0.)}))
# base_batch_size: the recipe's total batch (the UPerNet 160k recipe: 8 GPUs x 2 images); on fewer GPUs, --auto-scale-lr
# multiplies the learning rate by (GPUs x images per GPU) / base_batch_size (docs/reproduce.md).
auto_scale_lr = dict(enable=False, base_batch_size=16)
