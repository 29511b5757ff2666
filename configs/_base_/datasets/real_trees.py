# Tree crowns from the air (tools/dataset_converters/real_images.py trees; docs/real_images.md): one class, boxes.
# Train: random 256-px crops of the 400-px tiles of one Yellowstone image, rescaled by 0.75-1.33 around their
# native resolution (trees of 8-108 px, median 41), flipped horizontally, vertically or both (aerial views have no
# up), with random brightness, contrast, saturation and hue (the validation image is lit and coloured otherwise).
# Val and test: the other Yellowstone image, whole (1249x1035, 279 trees). The two images of other sites (OSBS_029,
# SOAP_061; 98 trees) are val_other_sites.json (docs/real_images.md: evaluating them). Up to 279 trees in one
# image: COCO's mAP counts up to 1000 detections (CocoMetric's proposal_nums).
# Also here: the parts of RetinaNet sized for trees, as variables the configs in configs/real/ use (tree_neck,
# tree_head, tree_test_cfg).
_base_ = 'mmdet::_base_/datasets/coco_detection.py'
data_root = 'data/real/trees/'
metainfo = dict(classes=('tree', ))
crop_size = (256, 256)
train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations', with_bbox=True),
    dict(type='RandomResize', scale=(400, 400), ratio_range=(0.75, 1.33), keep_ratio=True),  # the tiles: 400 px
    dict(type='RandomCrop', crop_size=crop_size, allow_negative_crop=False),
    dict(type='FilterAnnotations', min_gt_bbox_wh=(6, 6)),  # slivers a crop leaves at its border
    dict(type='RandomFlip', prob=0.75, direction=['horizontal', 'vertical', 'diagonal']),
    dict(type='PhotoMetricDistortion'),
    dict(type='PackDetInputs')
]
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='Resize', scale_factor=1.0, keep_ratio=True),  # native resolution, as trained
    dict(type='LoadAnnotations', with_bbox=True),
    dict(type='PackDetInputs', meta_keys=('img_id', 'img_path', 'ori_shape', 'img_shape', 'scale_factor'))
]
# mmdet's COCO loaders, in this process (no workers), on the converted files (file names relative to data_root)
real_dataset = dict(data_root=data_root, metainfo=metainfo, data_prefix=dict(img=''))
train_dataloader = dict(
    num_workers=0,
    persistent_workers=False,
    sampler=dict(type='InfiniteSampler'),
    batch_sampler=None,
    dataset=dict(real_dataset, ann_file='train.json', filter_cfg=dict(filter_empty_gt=True, min_size=4),
                 pipeline=train_pipeline))
val_dataloader = dict(
    num_workers=0, persistent_workers=False, dataset=dict(real_dataset, ann_file='val.json', pipeline=test_pipeline))
test_dataloader = val_dataloader
val_evaluator = dict(ann_file=data_root + 'val.json')
test_evaluator = val_evaluator

# RetinaNet for 8-108 px trees at their native resolution: a 64-channel FPN on strides 8-32 (the configs set
# in_channels for their backbone's stride 8, 16 and 32 outputs) and square anchors of 16-25 px at stride 8,
# 32-50 at 16, 64-101 at 32 (octave_base_scale 2, three scales per octave).
tree_neck = dict(out_channels=64, start_level=0, add_extra_convs=False, num_outs=3)
tree_head = dict(
    num_classes=1,
    in_channels=64,
    feat_channels=64,
    anchor_generator=dict(octave_base_scale=2, scales_per_octave=3, ratios=[1.0], strides=[8, 16, 32]))
tree_test_cfg = dict(max_per_img=300)  # up to 279 trees in the validation image
