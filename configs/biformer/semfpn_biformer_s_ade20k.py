"""Semantic FPN with a BiFormer-S backbone, ADE20K, 512x512 crops, 80k iterations, 8 GPUs x 4 images.

The authors' recipe (semantic_segmentation/configs/ade20k/sfpn.biformer_small.py, mmseg 0.30, "strictly
follows UniFormer") in mmseg 1.x: AdamW lr 2e-4 (1e-4 x 2 "gpu multiples"), weight decay 1e-4, default betas,
no parameter-wise rules; linear warmup 1000 iterations (ratio 0.1) composed with per-iteration cosine decay to
1e-8 x lr, both from iteration 0; checkpoint and evaluation every 4000 iterations; native AMP with a static
loss scale of 512; SyncBN; FPN (256 channels, 4 levels) + FPNHead (128 channels, dropout 0.1); batch 32 in
total.
Backbone: BiFormer_mm with n_win 8, topks [1, 4, 16, -2], auto_pad, drop path 0.15, SyncBN stem/downsample
norms (norm_eval=False). Difference: no AlignResize at test time (see upernet_biformer_s_ade20k.py).
Backbone weights: the authors' ImageNet-1k checkpoint converted with
  python tools/model_converters/official2mmsparse.py biformer biformer_small_best.pth \
      checkpoints/biformer_small_in1k_mmsparse.pth
"""
_base_ = [
    '../_base_/models/semfpn_biformer.py', '../_base_/datasets/ade20k.py',
    '../_base_/schedules/schedule_80k.py', '../_base_/default_runtime_seg.py'
]
train_dataloader = dict(batch_size=4, num_workers=4)
optim_wrapper = dict(
    type='AmpOptimWrapper',
    loss_scale=512.,
    optimizer=dict(type='AdamW', lr=2e-4, betas=(0.9, 0.999), weight_decay=1e-4))
find_unused_parameters = False
# base_batch_size: the recipe's total batch (Semantic FPN 80k: 8 GPUs x 4 images); on fewer GPUs, --auto-scale-lr
# multiplies the learning rate by (GPUs x images per GPU) / base_batch_size (docs/reproduce.md).
auto_scale_lr = dict(enable=False, base_batch_size=32)
