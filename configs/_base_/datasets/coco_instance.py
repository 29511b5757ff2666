# COCO 2017 instance segmentation at data/coco/ (annotations/, train2017/, val2017/), 1333x800, mmdet's stock pipeline.
_base_ = 'mmdet::_base_/datasets/coco_instance.py'
