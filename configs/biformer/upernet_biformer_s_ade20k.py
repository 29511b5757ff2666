"""UPerNet with a BiFormer-S backbone, ADE20K, 512x512 crops, 160k iterations, 8 GPUs x 2 images.

The authors' recipe (semantic_segmentation/configs/ade20k/upernet.biformer_small.py, mmseg 0.30; the 160k
schedule is from their README) in mmseg 1.x: AdamW lr 6e-5, betas (0.9, 0.999), weight decay 0.01, no decay
for parameter names containing 'norm', 'absolute_pos_embed' or 'relative_position_bias_table'; linear warmup
1500 iterations (ratio 1e-6) composed with poly decay (power 1) to 0, both from iteration 0; native AMP with
a static loss scale of 512 (the authors warn that AMP may give NaN losses); SyncBN in backbone and heads;
auxiliary FCN head on stage 3 (loss weight 0.4); find_unused_parameters=False; batch 16 in total.
Backbone: BiFormer_mm with n_win 8 (the training resolution is 512), topks [1, 4, 16, -2], auto_pad (test
images of any size work), drop path 0.3, SyncBN stem/downsample norms that train (norm_eval=False).
Difference: the authors' test-time AlignResize (resize to a multiple of 32) is not reproduced; mmseg 1.x's
stock keep-ratio Resize (2048, 512) is used.
Backbone weights: the authors' ImageNet-1k checkpoint converted with
  python tools/model_converters/official2mmsparse.py biformer biformer_small_best.pth \
      checkpoints/biformer_small_in1k_mmsparse.pth
"""
_base_ = [
    '../_base_/models/upernet_biformer.py', '../_base_/datasets/ade20k.py',
    '../_base_/schedules/schedule_160k.py', '../_base_/default_runtime_seg.py'
]
train_dataloader = dict(batch_size=2, num_workers=4)
optim_wrapper = dict(
    type='AmpOptimWrapper',
    loss_scale=512.,
    optimizer=dict(type='AdamW', lr=6e-5, betas=(0.9, 0.999), weight_decay=0.01),
    paramwise_cfg=dict(
        custom_keys={
            'absolute_pos_embed': dict(decay_mult=0.),
            'relative_position_bias_table': dict(decay_mult=0.),
            'norm': dict(decay_mult=0.)
        }))
find_unused_parameters = False
# base_batch_size: the recipe's total batch (the UPerNet 160k recipe: 8 GPUs x 2 images); on fewer GPUs, --auto-scale-lr
# multiplies the learning rate by (GPUs x images per GPU) / base_batch_size (docs/reproduce.md).
auto_scale_lr = dict(enable=False, base_batch_size=16)
