"""An exported mmsparse graph in ONNX Runtime, with the pre- and post-processing its metadata describes."""
from __future__ import annotations

import json
import os.path as osp
from dataclasses import dataclass
from typing import Any

import numpy as np

from .postprocess import full_masks, label_map, paste_masks, rescale_boxes
from .preprocess import ImageInfo, preprocess, read_image

#: the ONNX metadata key the exporter writes (mmsparse.deployment.export.META_KEY)
META_KEY = 'mmsparse'
REEXPORT = 're-export it with tools/deployment/export_onnx.py'
#: end-to-end detector output layouts: name -> output names
DET_LAYOUTS = {
    'mmdeploy': ('dets', 'labels'),
    'efficientnms': ('num_detections', 'detection_boxes', 'detection_scores', 'detection_classes')
}


class MetadataError(ValueError):
    """The ONNX file lacks what the runtime needs to run it on images."""


@dataclass
class Segmentation:
    """``label_map``: ``[H, W]`` int64 class indices at the original image size."""

    label_map: np.ndarray


@dataclass
class Detections:
    """Detections on the original image: ``bboxes`` ``[N, 4]`` (x1, y1, x2, y2), ``scores`` ``[N]``, ``labels``
    ``[N]`` and, for instance segmentation, ``masks`` ``[N, H, W]`` bool."""

    bboxes: np.ndarray
    scores: np.ndarray
    labels: np.ndarray
    masks: np.ndarray | None = None


def read_meta(session: Any, path: str) -> dict[str, Any]:
    """The ``mmsparse`` metadata of the session's file; :class:`MetadataError` when it cannot run on images."""
    raw = session.get_modelmeta().custom_metadata_map.get(META_KEY)
    if raw is None:
        raise MetadataError(f'{path}: not exported by mmsparse (no {META_KEY!r} metadata); {REEXPORT}')
    meta = json.loads(raw)
    kind = meta.get('kind')
    if kind == 'backbone':
        raise MetadataError(f'{path} is a backbone-only graph (features, no predictions); export the detector or '
                            'segmentor without --backbone-only')
    if 'preprocess' not in meta or 'task' not in meta:
        raise MetadataError(f'{path}: its metadata has no preprocessing (written by an older exporter); {REEXPORT}')
    if meta.get('unsupported'):
        raise MetadataError(f'{path}: the config\'s test-time steps {meta["unsupported"]} are not reproduced '
                            'without PyTorch; run tools/infer.py CONFIG MODEL.onnx INPUT --backend onnxruntime'
                            + (' on a graph exported with --outputs raw' if meta.get('layout') in DET_LAYOUTS else ''))
    if kind in ('single_stage', 'two_stage') and meta.get('layout') not in DET_LAYOUTS:
        raise MetadataError(
            f'{path}: a {kind.replace("_", "-")} detector graph without detections (layout '
            f'{meta.get("layout", "raw")!r}: the head or neck outputs, whose post-processing needs mmdet); {REEXPORT} '
            f'with NMS in the graph (layouts {sorted(DET_LAYOUTS)}), or run tools/infer.py CONFIG MODEL.onnx INPUT '
            '--backend onnxruntime')
    if kind not in ('segmentor', 'single_stage', 'two_stage'):
        raise MetadataError(f'{path}: unknown graph kind {kind!r}; {REEXPORT}')
    return meta


class OrtModel:
    """``path``'s graph in an ONNX Runtime CPU session; :meth:`predict` runs it on a BGR image.

    Args:
        threads: ONNX Runtime intra-op threads (default ONNX Runtime's).
    """

    def __init__(self, path: str, threads: int | None = None) -> None:
        try:
            import onnxruntime as ort
        except ImportError:
            raise ImportError('the runtime needs onnxruntime: pip install onnxruntime') from None
        if not osp.isfile(path):
            raise FileNotFoundError(f'model: no such ONNX file: {path}')
        options = ort.SessionOptions()
        if threads is not None:
            options.intra_op_num_threads = int(threads)
        self.path = path
        self.session = ort.InferenceSession(path, options, providers=['CPUExecutionProvider'])
        self.meta = read_meta(self.session, path)
        self.task: str = self.meta['task']
        self.classes: list[str] = list(self.meta.get('classes') or [])
        self.palette: list[list[int]] = list(self.meta.get('palette') or [])

    read = staticmethod(read_image)

    def run(self, tensor: np.ndarray, img_shape: tuple[int, int] | None = None) -> dict[str, np.ndarray]:
        """The graph's outputs by name on ``tensor`` ``[1, 3, H, W]``; ``ValueError`` for a shape it does not take.

        ``img_shape``: (H, W) of the image within ``tensor`` before padding (default: all of it), fed to the
        graphs that take it (end-to-end detectors clip their boxes to it).
        """
        if not self.meta.get('dynamic') and list(tensor.shape) != list(self.meta['shape']):
            raise ValueError(f'{self.path}: exported for inputs of shape {self.meta["shape"]} only, this image '
                             f'preprocesses to {list(tensor.shape)}; {REEXPORT} --dynamic')
        hw = tuple(tensor.shape[2:]) if img_shape is None else img_shape
        values = {'input': tensor, 'img_shape': np.asarray([hw], dtype=np.int64)}
        inputs = [i.name for i in self.session.get_inputs()]
        if len(inputs) == 1:
            feeds = {inputs[0]: tensor}
        else:
            unknown = [name for name in inputs if name not in values]
            if unknown:
                raise MetadataError(f'{self.path}: unknown graph inputs {unknown} (the runtime feeds '
                                    f'{sorted(values)}); {REEXPORT}')
            feeds = {name: values[name] for name in inputs}
        names = [o.name for o in self.session.get_outputs()]
        return dict(zip(names, self.session.run(names, feeds)))

    def predict(self, img: np.ndarray) -> Segmentation | Detections:
        """The prediction for the BGR uint8 image ``img`` ``[H, W, 3]``, at its size."""
        tensor, info = preprocess(img, self.meta['preprocess'])
        outputs = {name: value[0] for name, value in self.run(tensor, info.img_shape).items()}  # batch of one
        post = self.meta.get('postprocess') or {}
        if self.meta['kind'] == 'segmentor':
            logits = outputs[self.meta['outputs'][0]]
            return Segmentation(label_map(logits, info, bool(post.get('align_corners')), post.get('threshold')))
        return self._detections(outputs, info, float(post.get('mask_thr', 0.5)))

    def _detections(self, outputs: dict[str, np.ndarray], info: ImageInfo, mask_thr: float) -> Detections:
        # the real detections' rows; a slice where they come first, so that masks[keep] is a view, not a copy of
        # up to N full-size masks
        keep: np.ndarray | slice
        boxes: np.ndarray
        scores: np.ndarray
        labels: np.ndarray
        if self.meta['layout'] == 'mmdeploy':
            dets, labels = outputs['dets'].reshape(-1, 5), outputs['labels'].reshape(-1)
            real = np.flatnonzero((dets[:, 4] > 0) & (labels >= 0))  # padded rows: score 0
            keep = slice(len(real)) if np.array_equal(real, np.arange(len(real))) else real
            boxes, scores, labels = dets[keep, :4], dets[keep, 4], labels[keep]
        else:
            keep = slice(int(np.asarray(outputs['num_detections']).reshape(-1)[0]))
            boxes = outputs['detection_boxes'].reshape(-1, 4)[keep]
            scores, labels = outputs['detection_scores'][keep], outputs['detection_classes'][keep]
        result = Detections(bboxes=rescale_boxes(boxes, info), scores=scores.astype(np.float32),
                            labels=labels.astype(np.int64))
        masks = outputs.get('masks')
        if masks is not None:
            masks = masks[keep]
            if self.meta.get('masks') == 'roi':
                result.masks = paste_masks(masks, result.bboxes, info.ori_shape, mask_thr)
            else:
                result.masks = full_masks(masks, info, mask_thr)
        return result
