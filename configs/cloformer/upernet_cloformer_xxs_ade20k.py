"""UPerNet 160k with a CloFormer-XXS backbone on ADE20K (512x512 crops).

The CloFormer authors published no segmentation recipe (nor code or checkpoints). This is the standard
hierarchical-transformer UPerNet recipe that mmsparse's BiFormer configs use: AdamW lr 6e-5, betas (0.9, 0.999),
weight decay 0.01 with no decay on parameters whose name contains ``norm``, 160k iterations of poly decay
(power 1, to 0) with a 1500-iteration linear warmup (ratio 1e-6), 8 GPUs x 2 images, SyncBN, AMP with a static
loss scale of 512. Drop path 0.0, CloFormer-XXS's ImageNet value. UPerHead keeps mmseg's 512 channels; the
auxiliary FCNHead reads stage 3.

Test-time sizes need not be multiples of 32: CloFormer runs at any size without padding its input, so
whole-image inference sees the true image (padding would change the GroupNorm statistics).
"""
_base_ = [
    '../_base_/models/upernet_cloformer.py', '../_base_/datasets/ade20k.py',
    '../_base_/schedules/schedule_160k.py', '../_base_/default_runtime_seg.py'
]

train_dataloader = dict(batch_size=2, num_workers=2)

optim_wrapper = dict(
    type='AmpOptimWrapper',
    loss_scale=512.,
    optimizer=dict(type='AdamW', lr=6e-5, betas=(0.9, 0.999), weight_decay=0.01),
    paramwise_cfg=dict(custom_keys={'norm': dict(decay_mult=0.)}))
# base_batch_size: the recipe's total batch (the UPerNet 160k recipe: 8 GPUs x 2 images); on fewer GPUs, --auto-scale-lr
# multiplies the learning rate by (GPUs x images per GPU) / base_batch_size (docs/reproduce.md).
auto_scale_lr = dict(enable=False, base_batch_size=16)
