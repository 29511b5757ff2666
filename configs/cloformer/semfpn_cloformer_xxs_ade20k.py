"""Semantic FPN 80k with a CloFormer-XXS backbone on ADE20K (512x512 crops).

The CloFormer authors published no segmentation recipe (nor code or checkpoints). This is the standard
hierarchical-transformer Semantic FPN recipe that mmsparse's BiFormer configs use: AdamW lr 2e-4, weight decay
1e-4, no paramwise rules, 80k iterations of cosine decay (to 1e-8 x lr) with a 1000-iteration linear warmup
(ratio 0.1), 8 GPUs x 4 images, SyncBN, AMP with a static loss scale of 512. FPN 256 channels, FPNHead 128
channels. Drop path 0.0, CloFormer-XXS's ImageNet value.

Test-time sizes need not be multiples of 32: CloFormer runs at any size without padding its input.
"""
_base_ = [
    '../_base_/models/semfpn_cloformer.py', '../_base_/datasets/ade20k.py', '../_base_/schedules/schedule_80k.py',
    '../_base_/default_runtime_seg.py'
]

train_dataloader = dict(batch_size=4, num_workers=4)

optim_wrapper = dict(
    type='AmpOptimWrapper',
    loss_scale=512.,
    optimizer=dict(type='AdamW', lr=2e-4, betas=(0.9, 0.999), weight_decay=1e-4))
# base_batch_size: the recipe's total batch (Semantic FPN 80k: 8 GPUs x 4 images); on fewer GPUs, --auto-scale-lr
# multiplies the learning rate by (GPUs x images per GPU) / base_batch_size (docs/reproduce.md).
auto_scale_lr = dict(enable=False, base_batch_size=32)
