"""RetinaNet with ResNet-18 from scratch (the control: mmdet's ResNet, BN trained) on the tree crowns
(configs/_base_/datasets/real_trees.py), one CPU run of 8 minutes on one core: max_iters from the
measured speed (docs/real_images.md).

    python tools/dataset_converters/real_images.py trees --out data/real/trees
    python tools/train.py configs/real/retinanet_r18_1xb2-8min_real-trees.py
"""
_base_ = ['../_base_/models/retinanet_fpn.py', '../_base_/datasets/real_trees.py',
          './_base_/cpu_8min.py']
model = dict(
    backbone=dict(depth=18, out_indices=(1, 2, 3), frozen_stages=-1, norm_eval=False, init_cfg=None),
    neck=dict(_base_.tree_neck, in_channels=[128, 256, 512]),
    bbox_head=_base_.tree_head,
    test_cfg=_base_.tree_test_cfg)
max_iters = 470  # 8 min at the measured 1.03 s/it (one thread, another run on the other core)
train_cfg = dict(max_iters=max_iters, val_interval=max_iters)
param_scheduler = [_base_.param_scheduler[0], dict(_base_.param_scheduler[1], T_max=max_iters, end=max_iters)]
default_hooks = dict(checkpoint=dict(interval=max_iters))
auto_scale_lr = dict(enable=False, base_batch_size=2)
