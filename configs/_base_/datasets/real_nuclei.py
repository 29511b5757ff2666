# Cell nuclei (tools/dataset_converters/real_images.py nuclei; docs/real_images.md): one class, instance masks
# (RLE) of one 512x512 fluorescence image split at a column. Train: the left part (60 nuclei), random 192-px
# crops at native resolution (nuclei of 5-38 px, median 25), flipped horizontally, vertically or both. Val and
# test: the right part, whole (62 nuclei). Box and mask COCO metrics.
# Also here: the parts of Mask R-CNN sized for nuclei, as variables the configs in configs/real/ use
# (nucleus_neck, nucleus_rpn_head, nucleus_roi_head).
_base_ = 'mmdet::_base_/datasets/coco_instance.py'
data_root = 'data/real/nuclei/'
metainfo = dict(classes=('nucleus', ))
train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations', with_bbox=True, with_mask=True),
    dict(type='RandomCrop', crop_size=(192, 192), allow_negative_crop=False),
    dict(type='FilterAnnotations', min_gt_bbox_wh=(3, 3), min_gt_mask_area=9, by_mask=True),  # crop slivers
    dict(type='RandomFlip', prob=0.75, direction=['horizontal', 'vertical', 'diagonal']),
    dict(type='PackDetInputs')
]
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='Resize', scale_factor=1.0, keep_ratio=True),  # native resolution, as trained
    dict(type='LoadAnnotations', with_bbox=True, with_mask=True),
    dict(type='PackDetInputs', meta_keys=('img_id', 'img_path', 'ori_shape', 'img_shape', 'scale_factor'))
]
# mmdet's COCO loaders, in this process (no workers), on the converted files (file names relative to data_root)
real_dataset = dict(data_root=data_root, metainfo=metainfo, data_prefix=dict(img=''))
train_dataloader = dict(
    num_workers=0,
    persistent_workers=False,
    sampler=dict(type='InfiniteSampler'),
    batch_sampler=None,
    dataset=dict(real_dataset, ann_file='train.json', filter_cfg=dict(filter_empty_gt=True, min_size=2),
                 pipeline=train_pipeline))
val_dataloader = dict(
    num_workers=0, persistent_workers=False, dataset=dict(real_dataset, ann_file='val.json', pipeline=test_pipeline))
test_dataloader = val_dataloader
val_evaluator = dict(ann_file=data_root + 'val.json')
test_evaluator = val_evaluator

# Mask R-CNN for 5-38 px nuclei at native resolution: a 64-channel FPN on the backbone's four outputs (the configs
# set in_channels), RPN anchors of 20 px at stride 4 (scale 5) up to 320 at 64, 64-channel heads.
nucleus_neck = dict(out_channels=64)
nucleus_rpn_head = dict(in_channels=64, feat_channels=64, anchor_generator=dict(scales=[5]))
nucleus_roi_head = dict(
    bbox_roi_extractor=dict(out_channels=64),
    bbox_head=dict(in_channels=64, fc_out_channels=256, num_classes=1),
    mask_roi_extractor=dict(out_channels=64),
    mask_head=dict(in_channels=64, conv_out_channels=64, num_classes=1))
