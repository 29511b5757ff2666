"""Score an exported graph on a config's test set through the torch-free runtime, next to PyTorch.

The predictions come from :mod:`mmsparse_ort` (the image files of the test set's annotation, read and
preprocessed by the runtime itself, the graph in ONNX Runtime, the runtime's post-processing); the metrics from
the config's own ``test_evaluator`` (mmdet's ``CocoMetric``, mmseg's ``IoUMetric``), fed as the PyTorch test
loop feeds them. :func:`pytorch_metrics` runs mmengine's ``Runner.test`` on a checkpoint, as ``tools/test.py``
does, so that both sets of metrics can be printed side by side (:func:`metric_table`)::

    from mmsparse.deployment.evaluate import onnx_metrics, pytorch_metrics, metric_table
    got = onnx_metrics(cfg, 'model.onnx')
    print(metric_table(got.metrics, pytorch_metrics(cfg, 'model.pth', 'work_dirs/eval')))
"""
from __future__ import annotations

import copy
import os.path as osp
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from mmsparse.apis import task_of


@dataclass
class OnnxEvaluation:
    """``metrics`` of the config's evaluator; ``images`` evaluated, ``detections`` kept over all of them and
    ``per_image`` (detectors; 0 and empty for segmentors); ``notes``: what may make the metrics differ from
    PyTorch's."""

    metrics: dict[str, float]
    images: int
    detections: int = 0
    per_image: list[int] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


#: why a graph's masks pasted into the input (``--masks full``) score lower than mmdet's
FULL_MASKS_NOTE = ('the graph pastes its masks into the input (--masks full): where the test resize shrinks the '
                   'image, they are upsampled from the input\'s resolution and segm metrics can be lower than '
                   'PyTorch\'s; export with --masks roi for masks pasted at the image\'s size, as mmdet does')


def load_test_dataset(cfg: Any) -> Any:
    """The config's ``test_dataloader.dataset``, built in the config's scope (its data infos give the files)."""
    from mmengine.registry import DATASETS, DefaultScope, init_default_scope
    scope = task_of(cfg)
    init_default_scope(scope)
    with DefaultScope.overwrite_default_scope(scope):
        dataset = DATASETS.build(copy.deepcopy(cfg.test_dataloader.dataset))
    dataset.full_init()
    return dataset


def _load_annotations(cfg: Any) -> Any:
    """The test pipeline's ``LoadAnnotations`` step (mmseg: the ground-truth map at the label file's size)."""
    from mmengine.dataset import Compose
    steps = [s for s in cfg.test_dataloader.dataset.pipeline if 'LoadAnnotations' in str(s['type'])]
    if not steps:
        raise ValueError('test_dataloader.dataset.pipeline has no LoadAnnotations step: the segmentation '
                         'ground truth cannot be read')
    return Compose(copy.deepcopy(steps))


def _segmentation_sample(label_map: np.ndarray, info: dict, load: Any) -> dict:
    import torch
    gt = load(copy.deepcopy(info))['gt_seg_map']
    if gt.shape != label_map.shape:
        raise ValueError(f'{info["img_path"]}: the prediction is {label_map.shape[0]}x{label_map.shape[1]}, the '
                         f'ground truth {info["seg_map_path"]} {gt.shape[0]}x{gt.shape[1]}')
    return dict(img_path=info['img_path'], seg_map_path=info.get('seg_map_path'),
                pred_sem_seg=dict(data=torch.from_numpy(label_map.astype(np.int64))[None]),
                gt_sem_seg=dict(data=torch.from_numpy(np.asarray(gt).astype(np.int64))[None]))


def _detection_sample(dets: Any, info: dict, shape: tuple[int, int]) -> dict:
    import torch
    pred: dict[str, Any] = dict(bboxes=torch.from_numpy(np.asarray(dets.bboxes, np.float32).reshape(-1, 4)),
                                scores=torch.from_numpy(np.asarray(dets.scores, np.float32)),
                                labels=torch.from_numpy(np.asarray(dets.labels, np.int64)))
    if dets.masks is not None:
        pred['masks'] = torch.from_numpy(np.asarray(dets.masks, bool))  # encoded by the metric (mmdet's RLE)
    return dict(img_id=info['img_id'], img_path=info['img_path'], ori_shape=shape, pred_instances=pred,
                instances=info.get('instances', []))


def build_evaluator(cfg: Any, dataset: Any) -> Any:
    """The config's ``test_evaluator`` with the dataset's ``metainfo``, as mmengine's Runner builds it."""
    from mmengine.evaluator import Evaluator
    from mmengine.registry import DefaultScope
    with DefaultScope.overwrite_default_scope(task_of(cfg)):
        spec = copy.deepcopy(cfg.test_evaluator)
        evaluator = Evaluator(list(spec) if isinstance(spec, (list, tuple)) else spec)
    evaluator.dataset_meta = dataset.metainfo
    return evaluator


def onnx_metrics(cfg: Any, model_path: str, threads: int | None = None) -> OnnxEvaluation:
    """The config's test metrics for the exported graph ``model_path``, predicted by :mod:`mmsparse_ort`.

    Raises:
        ValueError: the graph's task is not the config's (``default_scope``).
        mmsparse_ort.MetadataError: a graph the runtime does not run (raw detector outputs, backbone only).
    """
    from mmsparse_ort import OrtModel, Segmentation
    task = task_of(cfg)
    model = OrtModel(model_path, threads)
    if model.task != task:
        raise ValueError(f'{model_path} is an {model.task} graph, the config an {task} one (default_scope)')
    dataset = load_test_dataset(cfg)
    evaluator = build_evaluator(cfg, dataset)
    load = _load_annotations(cfg) if task == 'mmseg' else None
    per_image = []
    with _scope(task):
        for index in range(len(dataset)):
            info = dataset.get_data_info(index)
            img = model.read(info['img_path'])
            result = model.predict(img)
            if isinstance(result, Segmentation):
                sample = _segmentation_sample(result.label_map, info, load)
            else:
                per_image.append(len(result.scores))
                sample = _detection_sample(result, info, img.shape[:2])
            evaluator.process(data_samples=[sample], data_batch=None)
        metrics = evaluator.evaluate(len(dataset))
    notes = [FULL_MASKS_NOTE] if model.meta.get('masks') == 'full' else []
    return OnnxEvaluation(metrics=_plain(metrics), images=len(dataset), detections=sum(per_image), per_image=per_image,
                          notes=notes)


def _plain(metrics: dict) -> dict[str, Any]:
    """Metrics as Python numbers (mmseg returns numpy floats), ready for JSON."""
    return {k: v.item() if isinstance(v, np.generic) else v for k, v in metrics.items()}


def _scope(task: str) -> Any:
    from mmengine.registry import DefaultScope
    return DefaultScope.overwrite_default_scope(task)


def pytorch_metrics(cfg: Any, checkpoint: str, work_dir: str) -> dict[str, float]:
    """``Runner.test`` of the config with ``checkpoint`` (what ``tools/test.py CONFIG CHECKPOINT`` prints)."""
    from mmengine.runner import Runner
    if not osp.isfile(checkpoint):
        raise FileNotFoundError(f'--checkpoint: no such file: {checkpoint}')
    cfg = copy.deepcopy(cfg)
    cfg.load_from = checkpoint
    cfg.work_dir = work_dir
    cfg.launcher = 'none'
    return _plain(Runner.from_cfg(cfg).test())


def metric_table(onnx: dict[str, float], pytorch: dict[str, float] | None = None) -> str:
    """One line per metric: the ONNX Runtime value and, given ``pytorch``, its value and the difference."""
    names = list(onnx) + [k for k in (pytorch or {}) if k not in onnx]
    width = max([len(n) for n in names] + [6])
    header = f'{"metric":<{width}}  {"onnxruntime":>12}'
    if pytorch is not None:
        header += f'  {"pytorch":>12}  {"difference":>12}'
    lines = [header]

    def cell(value: Any) -> str:
        return f'{value:>12.4f}' if isinstance(value, (int, float)) else f'{str(value):>12}'

    for name in names:
        got = onnx.get(name, '-')
        line = f'{name:<{width}}  {cell(got)}'
        if pytorch is not None:
            ref = pytorch.get(name, '-')
            diff = got - ref if isinstance(got, (int, float)) and isinstance(ref, (int, float)) else '-'
            line += f'  {cell(ref)}  {cell(diff)}'
        lines.append(line)
    return '\n'.join(lines)
