"""What a runtime without PyTorch needs from the config, stored in the exported graph's ``mmsparse`` metadata.

:func:`runtime_meta` reads the config's test pipeline, data preprocessor, test-time settings and class names;
``mmsparse_ort`` (``tools/infer.py MODEL.onnx IMAGE ...``) reproduces that preprocessing and post-processing with
numpy and OpenCV only. A step the runtime does not reproduce is listed under ``unsupported`` instead of failing
the export: the runtime then refuses the file with that list.
"""
from __future__ import annotations

from typing import Any

import numpy as np

#: test pipeline steps that do not change the image the network sees (annotations, packing)
PASSIVE_STEPS = ('LoadAnnotations', 'PackDetInputs', 'PackSegInputs')
#: ``Resize`` interpolations that the runtime reproduces (OpenCV's, as mmcv's ``cv2`` backend)
INTERPOLATIONS = ('nearest', 'bilinear', 'bicubic', 'area', 'lanczos')


def _step_type(step: dict) -> str:
    kind = step.get('type', '')
    kind = kind if isinstance(kind, str) else getattr(kind, '__name__', str(kind))
    return kind.split('.')[-1]  # 'mmdet.Resize' -> 'Resize'


def _resize(step: dict, unsupported: list[str]) -> dict[str, Any]:
    """``{scale: [w, h] | None, scale_factor: [fx, fy] | None, keep_ratio, interpolation}`` of a ``Resize``."""
    scale, factor = step.get('scale'), step.get('scale_factor')
    if isinstance(scale, int):
        scale = (scale, scale)
    if isinstance(factor, (int, float)):
        factor = (factor, factor)
    interpolation = step.get('interpolation', 'bilinear')
    if step.get('backend', 'cv2') != 'cv2' or interpolation not in INTERPOLATIONS:
        unsupported.append(f'Resize(backend={step.get("backend")!r}, interpolation={interpolation!r})')
    if scale is None and factor is None:
        unsupported.append('Resize without scale or scale_factor')
    return dict(scale=None if scale is None else [int(s) for s in scale],
                scale_factor=None if factor is None or scale is not None else [float(f) for f in factor],
                keep_ratio=bool(step.get('keep_ratio', False)), interpolation=interpolation)


def _pipeline(cfg: Any, unsupported: list[str]) -> dict[str, Any] | None:
    """The resize of the test pipeline (``None``: none); other image-changing steps go to ``unsupported``."""
    resize = None
    pipeline = ((cfg.get('test_dataloader') or {}).get('dataset') or {}).get('pipeline')
    if pipeline is None:
        unsupported.append('no test_dataloader.dataset.pipeline')
    for step in pipeline or ():
        kind = _step_type(step)
        if kind == 'LoadImageFromFile':
            if step.get('color_type', 'color') != 'color' or step.get('imdecode_backend', 'cv2') != 'cv2':
                unsupported.append(f'LoadImageFromFile(color_type={step.get("color_type")!r}, '
                                   f'imdecode_backend={step.get("imdecode_backend")!r})')
        elif kind == 'Resize' and resize is None:
            resize = _resize(step, unsupported)
        elif kind not in PASSIVE_STEPS:
            unsupported.append(kind)
    return resize


def _padding(preprocessor: dict, scope: str) -> dict[str, Any]:
    """``{size_divisor, size: [h, w], pad_val}``: the padding the data preprocessor applies at test time."""
    if scope == 'mmseg':
        # SegDataPreProcessor pads at test time only as its own test_cfg says; its `size` is for training batches
        test_cfg = preprocessor.get('test_cfg') or {}
        size = test_cfg.get('size')
        return dict(size_divisor=test_cfg.get('size_divisor'), size=None if size is None else [int(s) for s in size],
                    pad_val=float(preprocessor.get('pad_val', 0)))
    divisor = int(preprocessor.get('pad_size_divisor', 1))
    return dict(size_divisor=divisor if divisor > 1 else None, size=None,
                pad_val=float(preprocessor.get('pad_value', 0)))


def _normalisation(preprocessor: dict) -> dict[str, Any]:
    mean, std = preprocessor.get('mean'), preprocessor.get('std')
    return dict(mean=[float(m) for m in (mean if mean is not None else (0., 0., 0.))],
                std=[float(s) for s in (std if std is not None else (1., 1., 1.))],
                bgr_to_rgb=bool(preprocessor.get('bgr_to_rgb', preprocessor.get('rgb_to_bgr', False))))


def seeded_palette(num_classes: int) -> list[list[int]]:
    """mmdet's ``'random'`` palette: ``num_classes`` RGB colours drawn with numpy seed 42."""
    colors = np.random.RandomState(42).randint(0, 256, size=(num_classes, 3))
    return colors.tolist()


def _postprocess(cfg: Any, scope: str, unsupported: list[str]) -> dict[str, Any]:
    test_cfg = cfg.model.get('test_cfg') or {}
    if scope == 'mmdet':
        rcnn = test_cfg.get('rcnn') or {}
        return dict(mask_thr=float(rcnn.get('mask_thr_binary', 0.5)))
    mode = test_cfg.get('mode', 'whole')
    if mode != 'whole':
        unsupported.append(f'test_cfg mode {mode!r} (sliding-window inference)')
    head = cfg.model.get('decode_head') or {}
    head = head[-1] if isinstance(head, (list, tuple)) else head  # cascade decoders: the last head predicts
    threshold = head.get('threshold')
    if head.get('out_channels') == 1 and threshold is None:
        threshold = 0.3  # mmseg's BaseDecodeHead default for a binary head
    return dict(align_corners=bool(head.get('align_corners', False)),
                threshold=None if threshold is None else float(threshold))


def runtime_meta(cfg: Any) -> dict[str, Any]:
    """The entries a runtime without PyTorch needs to run the graph on image files, JSON-serialisable.

    Returns ``task`` (``mmdet`` / ``mmseg``), ``classes``, ``palette`` (RGB, one per class; mmdet's seeded
    random colours when the dataset has none), ``preprocess`` = ``{mean, std, bgr_to_rgb, resize: {scale [w, h],
    scale_factor, keep_ratio, interpolation} or None, pad: {size_divisor, size [h, w], pad_val}}`` (the padding
    the data preprocessor applies at *test* time, after normalisation), ``postprocess`` (detectors:
    ``mask_thr``; segmentors: ``align_corners``, ``threshold`` of a one-channel head) and ``unsupported``: the
    test-time steps the runtime does not reproduce (empty when it reproduces all of them).
    """
    from .runtime import config_dataset_meta
    scope = cfg.get('default_scope')
    if scope not in ('mmdet', 'mmseg'):
        raise ValueError(f'runtime_meta: default_scope must be mmdet or mmseg, got {scope!r}')
    unsupported: list[str] = []
    preprocessor = dict(cfg.model.get('data_preprocessor') or {})
    preprocess = dict(_normalisation(preprocessor), resize=_pipeline(cfg, unsupported),
                      pad=_padding(preprocessor, scope))
    dataset_meta = config_dataset_meta(cfg) or {}
    classes = [str(c) for c in dataset_meta.get('classes') or ()]
    palette = dataset_meta.get('palette')
    if not palette or len(palette) < len(classes):
        palette = seeded_palette(len(classes))
    return dict(task=scope, classes=classes, palette=[[int(v) for v in color] for color in palette[:len(classes)]],
                preprocess=preprocess, postprocess=_postprocess(cfg, scope, unsupported), unsupported=unsupported)
