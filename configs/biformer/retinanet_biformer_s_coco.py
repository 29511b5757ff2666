"""RetinaNet + FPN with a BiFormer-S backbone, COCO 2017, 1x (12 epochs), 8 GPUs x 2 images.

The authors' recipe (object_detection/configs/coco/retinanet.1x.biformer_small.py, mmdet 2.11) in mmdet 3.x:
AdamW lr 1e-4, weight decay 1e-4, default betas, no parameter-wise rules; linear warmup 500 iterations (ratio
0.001) then x0.1 after epochs 8 and 11; native AMP with a static loss scale of 512 (in the config;
--amp keeps it);
find_unused_parameters=True as in the original; batch 16 in total. FPN from stride 8 (start_level 1, extra
convs on the input, 5 levels; from the base), so the stride-4 output norm ``norm0`` gets no gradient: that is
what ``unused_parameters`` lists (tests/test_configs/test_config_gradients.py checks the list is exact).
Backbone: BiFormer_mm with n_win 16, topks [1, 4, 16, -2], auto_pad, drop path 0.2, BN statistics frozen
(norm_eval=True), one LayerNorm2d per output.
Backbone weights: the authors' ImageNet-1k checkpoint converted with
  python tools/model_converters/official2mmsparse.py biformer biformer_small_best.pth \
      checkpoints/biformer_small_in1k_mmsparse.pth
"""
_base_ = [
    '../_base_/models/retinanet_biformer.py', '../_base_/datasets/coco_detection.py',
    '../_base_/schedules/schedule_1x.py', '../_base_/default_runtime_det.py'
]
train_dataloader = dict(batch_size=2, num_workers=2)
optim_wrapper = dict(
    type='AmpOptimWrapper',
    loss_scale=512.,
    optimizer=dict(type='AdamW', lr=1e-4, betas=(0.9, 0.999), weight_decay=1e-4))
find_unused_parameters = True
# what DDP finds unused (the FPN skips the stride-4 output); read by the gradient test, not by mmengine
unused_parameters = ['backbone.norm0.weight', 'backbone.norm0.bias']
# base_batch_size: the recipe's total batch (the COCO 1x recipe: 8 GPUs x 2 images); on fewer GPUs, --auto-scale-lr
# multiplies the learning rate by (GPUs x images per GPU) / base_batch_size (docs/reproduce.md).
auto_scale_lr = dict(enable=False, base_batch_size=16)
