"""RetinaNet with STViT-S from scratch on the tree crowns (configs/_base_/datasets/real_trees.py), one CPU run
of 8 minutes on one core: max_iters from the measured speed (docs/real_images.md).

    python tools/dataset_converters/real_images.py trees --out data/real/trees
    python tools/train.py configs/real/retinanet_stvit-s_1xb2-8min_real-trees.py
"""
_base_ = ['../_base_/models/retinanet_stvit.py', '../_base_/datasets/real_trees.py',
          './_base_/cpu_8min.py']
model = dict(
    backbone=dict(drop_path_rate=0.1, norm_eval=False, init_cfg=None),
    neck=dict(_base_.tree_neck, in_channels=[128, 320, 512]),
    bbox_head=_base_.tree_head,
    test_cfg=_base_.tree_test_cfg)
max_iters = 170  # 8 min at the measured 2.84 s/it (one thread, another run on the other core)
train_cfg = dict(max_iters=max_iters, val_interval=max_iters)
param_scheduler = [_base_.param_scheduler[0], dict(_base_.param_scheduler[1], T_max=max_iters, end=max_iters)]
default_hooks = dict(checkpoint=dict(interval=max_iters))
auto_scale_lr = dict(enable=False, base_batch_size=2)
