"""Run graphs exported by mmsparse on image files with numpy, OpenCV and ONNX Runtime only (no PyTorch).

The graph's ``mmsparse`` metadata (written by ``tools/deployment/export_onnx.py``) says how to preprocess an
image (the config's test resize, normalisation and padding) and what the outputs are; this package reproduces
mmdet's / mmseg's test-time steps around the graph and writes what ``tools/infer.py`` writes::

    from mmsparse_ort import OrtModel, infer_images
    model = OrtModel('upernet.onnx')
    result = model.predict(model.read('photo.jpg'))  # Segmentation(label_map) or Detections(...)
    infer_images('upernet.onnx', ['photo.jpg'], 'outputs/infer')  # pictures, label maps and results.json

Nothing here imports torch, mmcv, mmengine, mmdet, mmseg or pycocotools.
"""
from __future__ import annotations

from .model import Detections, MetadataError, OrtModel, Segmentation
from .preprocess import ImageInfo, preprocess, read_image, rescale_size
from .results import infer_images
from .rle import encode_rle

__all__ = [
    'Detections', 'ImageInfo', 'MetadataError', 'OrtModel', 'Segmentation', 'encode_rle',
    'infer_images', 'preprocess', 'read_image', 'rescale_size'
]
