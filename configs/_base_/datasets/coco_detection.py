# COCO 2017 detection at data/coco/ (annotations/, train2017/, val2017/), 1333x800, mmdet's stock pipeline.
_base_ = 'mmdet::_base_/datasets/coco_detection.py'

# tools/test.py --tta: mmdet's DetTTAModel (boxes of every view mapped back, merged by NMS) over three scales and
# a horizontal flip, as mmdet's own retinanet_tta.py. The authors report single-scale COCO numbers only.
# Instance masks have no TTA in mmdet 3.3 (DetTTAModel merges boxes only), so coco_instance.py defines none.
tta_model = dict(type='DetTTAModel', tta_cfg=dict(nms=dict(type='nms', iou_threshold=0.5), max_per_img=100))
tta_img_scales = [(1333, 800), (666, 400), (2000, 1200)]
tta_pipeline = [
    dict(type='LoadImageFromFile', backend_args=None),
    dict(
        type='TestTimeAug',
        transforms=[
            [dict(type='Resize', scale=s, keep_ratio=True) for s in tta_img_scales],
            [dict(type='RandomFlip', prob=1.), dict(type='RandomFlip', prob=0.)],
            [dict(type='LoadAnnotations', with_bbox=True)],
            [dict(type='PackDetInputs', meta_keys=('img_id', 'img_path', 'ori_shape', 'img_shape', 'scale_factor',
                                                   'flip', 'flip_direction'))]
        ])
]
