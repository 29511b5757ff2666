"""RetinaNet + FPN with an STViT-S backbone, COCO 2017, 1x (12 epochs), 8 GPUs x 2 images.

Standard hierarchical-transformer recipe (PVT / Swin RetinaNet 1x), not the authors' (none published): AdamW
lr 1e-4, weight decay 1e-4 (0 for parameters whose name contains 'norm'), linear warmup 500 iterations then
x0.1 after epochs 8 and 11, fp32, batch 16 in total. FPN from stride 8 (extra convs on input): only stages 2-4
are output (``out_indices=(1, 2, 3)``) and the FPN starts at its first input, the same network as
``start_level=1`` on four inputs without an unused stride-4 output norm (which DDP rejects at the second
iteration unless ``find_unused_parameters=True``).

mmsparse choices as in maskrcnn_stvit_s_coco.py: super-token sizes [8, 4, 2, 1], frozen BN statistics,
per-output LN2d; weights converted with tools/model_converters/official2mmsparse.py.
"""
_base_ = [
    '../_base_/models/retinanet_stvit.py', '../_base_/datasets/coco_detection.py',
    '../_base_/schedules/schedule_1x.py', '../_base_/default_runtime_det.py'
]
train_dataloader = dict(batch_size=2, num_workers=2)
optim_wrapper = dict(
    type='OptimWrapper',
    optimizer=dict(type='AdamW', lr=1e-4, betas=(0.9, 0.999), weight_decay=1e-4),
    paramwise_cfg=dict(custom_keys={'norm': dict(decay_mult=0.)}))
# base_batch_size: the recipe's total batch (the COCO 1x recipe: 8 GPUs x 2 images); on fewer GPUs, --auto-scale-lr
# multiplies the learning rate by (GPUs x images per GPU) / base_batch_size (docs/reproduce.md).
auto_scale_lr = dict(enable=False, base_batch_size=16)
