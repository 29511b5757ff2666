"""RetinaNet 1x with a CloFormer-XXS backbone on COCO.

The CloFormer authors published no detection recipe (nor code or checkpoints). This is the standard
hierarchical-transformer RetinaNet recipe that mmsparse's BiFormer configs use: AdamW lr 1e-4, weight decay 1e-4,
no paramwise rules, 12 epochs (step x0.1 after epochs 8 and 11, 500-iteration linear warmup), 8 GPUs x 2 images,
AMP with a static loss scale of 512. Drop path 0.0, the value the authors trained CloFormer-XXS with on ImageNet.

RetinaNet's FPN starts at stride 8, so only stages 2-4 are output (``out_indices=(1, 2, 3)``) and the FPN starts
at its first input: the same network as ``start_level=1`` on four inputs, without an unused stride-4 output
(which DDP would reject without ``find_unused_parameters``).
"""
_base_ = [
    '../_base_/models/retinanet_cloformer.py', '../_base_/datasets/coco_detection.py',
    '../_base_/schedules/schedule_1x.py', '../_base_/default_runtime_det.py'
]

train_dataloader = dict(batch_size=2, num_workers=2)

optim_wrapper = dict(
    type='AmpOptimWrapper',
    loss_scale=512.,
    optimizer=dict(type='AdamW', lr=1e-4, betas=(0.9, 0.999), weight_decay=1e-4))
# base_batch_size: the recipe's total batch (the COCO 1x recipe: 8 GPUs x 2 images); on fewer GPUs, --auto-scale-lr
# multiplies the learning rate by (GPUs x images per GPU) / base_batch_size (docs/reproduce.md).
auto_scale_lr = dict(enable=False, base_batch_size=16)
