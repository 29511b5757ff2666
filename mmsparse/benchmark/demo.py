"""What ``tools/demo.py`` runs (its docstring describes the steps): the data of a set of jobs (synthetic data for
the demo configs, or the real images of docs/real_images.md), then for each job's model an evaluation untrained,
training, an evaluation of the final checkpoint through tools/test.py and tools/train.py, and pictures of its
predictions; :func:`run_demo` does it all and prints the summary."""
from __future__ import annotations

import glob
import json
import os
import os.path as osp
import shutil
import subprocess
import sys
import time
from collections import deque
from typing import Any

from . import REPO

# the real-image jobs: the family that did best in docs/real_images.md's runs
REAL_TREES_CONFIG = 'configs/real/retinanet_cloformer-xxs_1xb2-8min_real-trees.py'
REAL_NUCLEI_CONFIG = 'configs/real/maskrcnn_cloformer-xxs_1xb2-8min_real-nuclei.py'

# (task, config, metrics shown in the summary, the command that makes the config's data) for each set of jobs
JOBS: dict[str, list[tuple[str, str, list[str], list[str]]]] = {
    'synthetic': [
        ('detection', 'configs/demo/maskrcnn_demo_synthetic.py',
         ['coco/bbox_mAP', 'coco/bbox_mAP_50', 'coco/segm_mAP', 'coco/segm_mAP_50'],
         ['tools/dataset_converters/make_synthetic.py', '--config', 'configs/demo/maskrcnn_demo_synthetic.py',
          '--skip-existing']),
        ('segmentation', 'configs/demo/upernet_demo_synthetic.py', ['mIoU', 'mAcc', 'aAcc'],
         ['tools/dataset_converters/make_synthetic.py', '--config', 'configs/demo/upernet_demo_synthetic.py',
          '--skip-existing']),
    ],
    'real': [
        ('trees', REAL_TREES_CONFIG, ['coco/bbox_mAP', 'coco/bbox_mAP_50'],
         ['tools/dataset_converters/real_images.py', 'trees', '--out', 'data/real/trees']),
        ('nuclei', REAL_NUCLEI_CONFIG, ['coco/bbox_mAP', 'coco/bbox_mAP_50', 'coco/segm_mAP', 'coco/segm_mAP_50'],
         ['tools/dataset_converters/real_images.py', 'nuclei', '--out', 'data/real/nuclei']),
    ],
}
TITLES = {'synthetic': 'synthetic data, reduced BiFormer backbones trained from scratch (seeded)',
          'real': 'real images (tree crowns, cell nuclei), the smallest variants trained from scratch (seeded)'}
# mmengine log lines worth showing while a command runs
PROGRESS = ('Iter(train)', 'Iter(test)', 'Saving checkpoint')


def run(args: list[str]) -> None:
    """Run a repository script with this interpreter, echo its progress, fail loudly with its log tail."""
    print('$ python ' + ' '.join(args), flush=True)
    env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get('PYTHONPATH', ''), PYTHONUNBUFFERED='1')
    tail: deque[str] = deque(maxlen=60)
    with subprocess.Popen([sys.executable] + args, cwd=REPO, env=env, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True, bufsize=1) as proc:
        for line in proc.stdout:  # type: ignore[union-attr]  # not None: stdout=PIPE
            tail.append(line)
            if any(key in line for key in PROGRESS):
                print('   ' + line.split(' - mmengine - INFO - ')[-1].rstrip()[:170], flush=True)
    if proc.returncode != 0:
        print(''.join(tail))
        raise SystemExit(f'command failed with exit code {proc.returncode}: {" ".join(args)}')


def schedule_options(cfg: Any, iters: int | None) -> tuple[int, list[str]]:
    """``(iters, --cfg-options)`` that train for ``iters`` iterations (None: the config's ``max_iters``), save only
    the final checkpoint and skip the in-training validation (tools/test.py evaluates the checkpoint)."""
    max_iters = cfg.train_cfg.get('max_iters')
    if max_iters is None:
        raise SystemExit('the demo configs must train by iterations (train_cfg.max_iters)')
    iters = iters or max_iters
    options = [f'train_cfg.max_iters={iters}', f'train_cfg.val_begin={iters + 1}',
               f'default_hooks.checkpoint.interval={iters}']
    interval = (cfg.default_hooks.get('logger') or {}).get('interval', 1)
    if interval > max(1, iters // 10):  # at least ~10 points on the loss curve of a short run
        options.append(f'default_hooks.logger.interval={max(1, iters // 10)}')
    if iters != max_iters:
        schedulers = cfg.get('param_scheduler') or []
        schedulers = [schedulers] if isinstance(schedulers, dict) else schedulers
        for i, scheduler in enumerate(schedulers):
            for key in ('end', 'T_max'):
                if scheduler.get(key) == max_iters:
                    options.append(f'param_scheduler.{i}.{key}={iters}')
    return iters, options


def build_model(cfg: Any, checkpoint: str | None = None) -> tuple[Any, Any]:
    """``(model, test dataset)`` of the config: the model (an mmengine ``BaseModel``) seeded as training
    initialises it, or loaded from ``checkpoint``.

    The config's default scope becomes the current one (the visualizer is built in it).
    """
    from mmengine.registry import DATASETS, init_default_scope

    from mmsparse.apis import build_model as _build_model
    init_default_scope(cfg.default_scope)
    model = _build_model(cfg, checkpoint, seed=cfg.get('randomness', {}).get('seed', 0))
    return model, DATASETS.build(cfg.test_dataloader.dataset)


def save_untrained(cfg: Any, path: str) -> None:
    """The initialised model's weights as an mmengine checkpoint, for tools/test.py."""
    from mmengine.runner import save_checkpoint, weights_to_cpu
    model, dataset = build_model(cfg)
    save_checkpoint({'state_dict': weights_to_cpu(model.state_dict()),
                     'meta': {'dataset_meta': dataset.metainfo, 'iter': 0}}, path)


# what mmdet's CocoMetric logs instead of metrics when a model detected nothing in the whole test set
NO_DETECTIONS = 'The testing results of the whole dataset is empty'


def test_metrics(work_dir: str, keys: list[str] | None = None) -> dict[str, Any]:
    """The metrics tools/test.py wrote: mmengine's LoggerHook dumps them to ``<work_dir>/<stamp>/<stamp>.json``.

    mmdet's CocoMetric reports no metric when the model detected nothing at all (an untrained RetinaNet scores
    below the threshold everywhere); when its log says so, the COCO ``keys`` are 0.0, the mAP of no detections.
    """
    found = sorted(path for path in glob.glob(osp.join(work_dir, '*', '*.json'))
                   if osp.basename(path) == osp.basename(osp.dirname(path)) + '.json')
    if not found:
        raise SystemExit(f'tools/test.py wrote no metrics JSON under {work_dir}')
    with open(found[-1]) as f:
        metrics = json.load(f)
    log = found[-1][:-len('.json')] + '.log'
    if keys and not any(key in metrics for key in keys) and osp.isfile(log):
        with open(log) as f:
            if NO_DETECTIONS in f.read():
                metrics.update({key: 0.0 for key in keys if key.startswith('coco/')})
    if not metrics:
        raise SystemExit(f'{found[-1]} holds no metrics')
    return metrics


def loss_curve(work_dir: str) -> tuple[list[int], list[float]]:
    """(iterations, losses) from mmengine's ``vis_data/scalars.json`` of a training run."""
    found = sorted(glob.glob(osp.join(work_dir, '*', 'vis_data', 'scalars.json')))
    if not found:
        raise SystemExit(f'tools/train.py wrote no vis_data/scalars.json under {work_dir}')
    iters, losses = [], []
    with open(found[-1]) as f:
        for line in f:
            record = json.loads(line)
            if 'loss' in record:
                iters.append(record['iter'])
                losses.append(record['loss'])
    return iters, losses


def plot_losses(curves: dict[str, tuple[list[int], list[float]]], path: str) -> None:
    """One training-loss plot per task, side by side, as a PNG at ``path``."""
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, len(curves), figsize=(5 * len(curves), 3.6), squeeze=False)
    for ax, (task, (iters, losses)) in zip(axes[0], curves.items()):
        ax.plot(iters, losses, marker='.')
        ax.set(title=f'{task}: training loss', xlabel='iteration', ylabel='total loss')
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def draw_predictions(cfg: Any, checkpoint: str, num_images: int, path: str) -> None:
    """Ground truth (left) and prediction (right) of ``num_images`` validation images, by the config's visualizer.

    One PNG per image in the folder ``path`` without its extension, and all of them, a row each, in ``path``.
    """
    import mmcv
    import numpy as np
    import torch
    from mmengine.dataset import pseudo_collate
    from mmengine.registry import VISUALIZERS

    model, dataset = build_model(cfg, checkpoint)
    num_images = min(num_images, len(dataset))  # the real sets validate on one image
    visualizer = VISUALIZERS.build(dict(type=cfg.visualizer.type, name=f'demo_{osp.basename(path)}'))
    visualizer.dataset_meta = dataset.metainfo
    with torch.no_grad():
        samples = model.test_step(pseudo_collate([dataset[i] for i in range(num_images)]))
    rows = []
    for sample in samples:
        image = mmcv.imread(sample.img_path, channel_order='rgb')
        # each image's drawing goes to its own file (mmseg's visualizer keeps only its last panel in get_image)
        out_file = osp.join(osp.splitext(path)[0], osp.basename(sample.img_path).rsplit('.', 1)[0] + '.png')
        visualizer.add_datasample('prediction', image, sample, draw_gt=True, draw_pred=True, show=False,
                                  out_file=out_file)
        rows.append(mmcv.imread(out_file))
    width = max(row.shape[1] for row in rows)
    rows = [np.pad(row, ((0, 4), (0, width - row.shape[1]), (0, 0)), constant_values=255) for row in rows]
    mmcv.imwrite(np.concatenate(rows), path)


def run_demo(train_iters: int | None = None, work_dir: str = 'work_dirs/demo', num_images: int = 4,
             data: str = 'synthetic', tasks: list[str] | None = None) -> None:
    """The whole demo (module docstring) for the jobs of ``data`` (a key of :data:`JOBS`) named in ``tasks``
    (None: all): ``train_iters`` training iterations (None: each config's ``max_iters``), outputs under
    ``work_dir``, up to ``num_images`` validation images drawn per model."""
    from mmengine.config import Config

    start = time.time()
    work_root = osp.abspath(work_dir)
    os.makedirs(work_root, exist_ok=True)
    results: dict[str, dict[str, Any]] = {}
    curves: dict[str, tuple[list[int], list[float]]] = {}
    pictures: dict[str, str] = {}
    if data not in JOBS:
        raise SystemExit(f'data must be one of {sorted(JOBS)}, got {data!r}')
    known = [job[0] for job in JOBS[data]]
    unknown = sorted(set(tasks or []) - set(known))
    if unknown:
        raise SystemExit(f'tasks {unknown} are not jobs of the {data} demo; it has {known}')
    for task, config, keys, prepare in JOBS[data]:
        if tasks and task not in tasks:
            continue
        run(prepare)
        cfg = Config.fromfile(osp.join(REPO, config))
        iters, options = schedule_options(cfg, train_iters)
        work = osp.join(work_root, task)
        shutil.rmtree(work, ignore_errors=True)  # only this run's files are read back
        os.makedirs(work)
        timer = time.time()
        untrained = osp.join(work, 'untrained.pth')
        save_untrained(cfg, untrained)
        run(['tools/test.py', config, untrained, '--work-dir', osp.join(work, 'test_untrained')])
        before = test_metrics(osp.join(work, 'test_untrained'), keys)
        test_time = time.time() - timer

        timer = time.time()
        run(['tools/train.py', config, '--work-dir', osp.join(work, 'train'), '--cfg-options', *options])
        train_time = time.time() - timer

        checkpoint = osp.join(work, 'train', f'iter_{iters}.pth')
        run(['tools/test.py', config, checkpoint, '--work-dir', osp.join(work, 'test_trained')])
        after = test_metrics(osp.join(work, 'test_trained'), keys)
        missing = [k for k in keys if k not in after or k not in before]
        if missing:
            raise SystemExit(f'{task}: tools/test.py reported no {missing}')
        results[task] = dict(metrics=[(k, before[k], after[k]) for k in keys], iters=iters,
                             train_time=train_time, test_time=test_time)
        curves[task] = loss_curve(osp.join(work, 'train'))
        pictures[task] = osp.join(work_root, f'{task}_predictions.png')
        draw_predictions(cfg, checkpoint, num_images, pictures[task])

    loss_png = osp.join(work_root, 'training_loss.png')
    plot_losses(curves, loss_png)
    print(f'\n== mmsparse demo: {TITLES[data]} ==')
    print(f'{"task":<13} {"metric":<17} {"untrained":>10} {"trained":>10}')
    for task, result in results.items():
        for key, before, after in result['metrics']:
            fmt = '{:10.3f}' if key.startswith('coco/') else '{:10.2f}'
            print(f'{task:<13} {key:<17} {fmt.format(before)} {fmt.format(after)}')
        print(f'{task:<13} {"train time":<17} {"":>10} {result["train_time"]:9.0f}s  ({result["iters"]} iterations)')
    print(f'total time {time.time() - start:.0f}s')
    print(f'training loss curves: {loss_png}')
    for task, path in pictures.items():
        print(f'{task} predictions (ground truth | prediction, validation images): {path}')
