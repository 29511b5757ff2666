"""Semantic FPN with an STViT-S backbone, ADE20K, 512x512 crops, 80k iterations, 8 GPUs x 4 images.

Standard recipe (PVT / BiFormer Semantic FPN), not the authors' (none published): AdamW lr 2e-4, weight decay
1e-4 (0 for parameters whose name contains 'norm'), linear warmup 1000 iterations (ratio 0.1) composed with
cosine decay to 1e-8 x lr, fp32, batch 32 in total.

mmsparse choices as in upernet_stvit_s_ade20k.py: super-token sizes [8, 4, 1, 1], SyncBN, per-output LN2d.
"""
_base_ = [
    '../_base_/models/semfpn_stvit.py', '../_base_/datasets/ade20k.py',
    '../_base_/schedules/schedule_80k.py', '../_base_/default_runtime_seg.py'
]
train_dataloader = dict(batch_size=4, num_workers=4)
optim_wrapper = dict(
    type='OptimWrapper',
    optimizer=dict(type='AdamW', lr=2e-4, betas=(0.9, 0.999), weight_decay=1e-4),
    paramwise_cfg=dict(custom_keys={'norm': dict(decay_mult=0.)}))
# base_batch_size: the recipe's total batch (Semantic FPN 80k: 8 GPUs x 4 images); on fewer GPUs, --auto-scale-lr
# multiplies the learning rate by (GPUs x images per GPU) / base_batch_size (docs/reproduce.md).
auto_scale_lr = dict(enable=False, base_batch_size=32)
