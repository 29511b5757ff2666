"""Mask R-CNN + FPN with an STViT-S backbone, COCO 2017, 1x (12 epochs), 8 GPUs x 2 images.

Standard hierarchical-transformer recipe (mmdet's Swin Mask R-CNN 1x), not the authors' (they published no
detection code or settings): AdamW lr 1e-4, weight decay 0.05 (0 for parameters whose name contains 'norm'),
linear warmup 500 iterations then x0.1 after epochs 8 and 11, fp32, batch 16 in total.

mmsparse choices: super-token sizes [8, 4, 2, 1] (stages 1-2 as trained; stage 3 uses 2x2 super tokens instead
of global attention over 50x84 = 4,200 tokens, so every stage attends over about 1,050 tokens at 800x1333),
BatchNorm statistics frozen (norm_eval=True; 2 images per GPU are too few for BN), per-output LN2d.
Backbone weights: the authors' stvit-small-224.pth converted with
tools/model_converters/official2mmsparse.py stvit stvit-small-224.pth checkpoints/stvit_s_in1k_mmsparse.pth
"""
_base_ = [
    '../_base_/models/maskrcnn_stvit.py', '../_base_/datasets/coco_instance.py',
    '../_base_/schedules/schedule_1x.py', '../_base_/default_runtime_det.py'
]
train_dataloader = dict(batch_size=2, num_workers=2)
optim_wrapper = dict(
    type='OptimWrapper',
    optimizer=dict(type='AdamW', lr=1e-4, betas=(0.9, 0.999), weight_decay=0.05),
    paramwise_cfg=dict(custom_keys={'norm': dict(decay_mult=0.)}))
# base_batch_size: the recipe's total batch (the COCO 1x recipe: 8 GPUs x 2 images); on fewer GPUs, --auto-scale-lr
# multiplies the learning rate by (GPUs x images per GPU) / base_batch_size (docs/reproduce.md).
auto_scale_lr = dict(enable=False, base_batch_size=16)
