"""Mask R-CNN with CloFormer-XXS from scratch on the cell nuclei (configs/_base_/datasets/real_nuclei.py), one CPU run
of 8 minutes on one core: max_iters from the measured speed (docs/real_images.md).

    python tools/dataset_converters/real_images.py nuclei --out data/real/nuclei
    python tools/train.py configs/real/maskrcnn_cloformer-xxs_1xb2-8min_real-nuclei.py
"""
_base_ = ['../_base_/models/maskrcnn_cloformer.py', '../_base_/datasets/real_nuclei.py',
          './_base_/cpu_8min.py']
model = dict(
    backbone=dict(norm_cfg=dict(type='BN', requires_grad=True), init_cfg=None),
    neck=dict(_base_.nucleus_neck, in_channels=[32, 64, 128, 256]),
    rpn_head=_base_.nucleus_rpn_head,
    roi_head=_base_.nucleus_roi_head)
max_iters = 410  # 8 min at the measured 1.18 s/it (one thread, others running beside it)
train_cfg = dict(max_iters=max_iters, val_interval=max_iters)
param_scheduler = [_base_.param_scheduler[0], dict(_base_.param_scheduler[1], T_max=max_iters, end=max_iters)]
default_hooks = dict(checkpoint=dict(interval=max_iters))
auto_scale_lr = dict(enable=False, base_batch_size=2)
