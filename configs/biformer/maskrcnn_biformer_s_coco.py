"""Mask R-CNN + FPN with a BiFormer-S backbone, COCO 2017, 1x (12 epochs), 8 GPUs x 2 images.

The authors' recipe (object_detection/configs/coco/maskrcnn.1x.biformer_small.py, mmdet 2.11) in mmdet 3.x:
AdamW lr 1e-4, betas (0.9, 0.999), weight decay 0.05, no decay for parameter names containing 'norm' (the
block LNs and output norms; the stem/downsample BNs keep their decay), 'absolute_pos_embed' or
'relative_position_bias_table' (substring rules kept verbatim); linear warmup 500 iterations (ratio 0.001)
then x0.1 after epochs 8 and 11; native AMP with a static loss scale of 512 (mmcv 1.x's fp16 default; already
in the config, so --amp is not needed: tools/train.py keeps this static scale when it is given); no gradient
clipping; batch 16 in total.
Backbone: BiFormer_mm with n_win 16, topks [1, 4, 16, -2], auto_pad, drop path 0.2, BN statistics frozen
(norm_eval=True, affine parameters still train), one LayerNorm2d per output.
Backbone weights: the authors' ImageNet-1k checkpoint converted with
  python tools/model_converters/official2mmsparse.py biformer biformer_small_best.pth \
      checkpoints/biformer_small_in1k_mmsparse.pth
"""
_base_ = [
    '../_base_/models/maskrcnn_biformer.py', '../_base_/datasets/coco_instance.py',
    '../_base_/schedules/schedule_1x.py', '../_base_/default_runtime_det.py'
]
train_dataloader = dict(batch_size=2, num_workers=2)
optim_wrapper = dict(
    type='AmpOptimWrapper',
    loss_scale=512.,
    optimizer=dict(type='AdamW', lr=1e-4, betas=(0.9, 0.999), weight_decay=0.05),
    paramwise_cfg=dict(
        custom_keys={
            'absolute_pos_embed': dict(decay_mult=0.),
            'relative_position_bias_table': dict(decay_mult=0.),
            'norm': dict(decay_mult=0.)
        }))
# base_batch_size: the recipe's total batch (the COCO 1x recipe: 8 GPUs x 2 images); on fewer GPUs, --auto-scale-lr
# multiplies the learning rate by (GPUs x images per GPU) / base_batch_size (docs/reproduce.md).
auto_scale_lr = dict(enable=False, base_batch_size=16)
