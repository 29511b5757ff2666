"""Mask R-CNN 1x with a CloFormer-XXS backbone on COCO.

The CloFormer authors published no detection recipe (nor code or checkpoints). This is the standard
hierarchical-transformer Mask R-CNN recipe that mmsparse's BiFormer configs use: AdamW lr 1e-4, betas
(0.9, 0.999), weight decay 0.05 with no decay on parameters whose name contains ``norm`` (CloFormer's GroupNorms
``norm1``/``norm2``/``layernorm`` and the output norms ``norm0..3``; the stem and shortcut BatchNorms keep their
decay, as BiFormer's BNs do), 12 epochs (step x0.1 after epochs 8 and 11, 500-iteration linear warmup),
8 GPUs x 2 images, AMP with a static loss scale of 512. Drop path 0.0, CloFormer-XXS's ImageNet value.
"""
_base_ = [
    '../_base_/models/maskrcnn_cloformer.py', '../_base_/datasets/coco_instance.py',
    '../_base_/schedules/schedule_1x.py', '../_base_/default_runtime_det.py'
]

train_dataloader = dict(batch_size=2, num_workers=2)

optim_wrapper = dict(
    type='AmpOptimWrapper',
    loss_scale=512.,
    optimizer=dict(type='AdamW', lr=1e-4, betas=(0.9, 0.999), weight_decay=0.05),
    paramwise_cfg=dict(custom_keys={'norm': dict(decay_mult=0.)}))
# base_batch_size: the recipe's total batch (the COCO 1x recipe: 8 GPUs x 2 images); on fewer GPUs, --auto-scale-lr
# multiplies the learning rate by (GPUs x images per GPU) / base_batch_size (docs/reproduce.md).
auto_scale_lr = dict(enable=False, base_batch_size=16)
