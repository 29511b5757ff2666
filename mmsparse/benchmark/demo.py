"""The main job on the embedded default: generate the demo configs' synthetic data if missing (their
``synthetic_data`` entries), then for the demo Mask R-CNN and UPerNet (reduced BiFormer backbones, trained
from scratch, seeded):

1. evaluate the initialised, untrained model through tools/test.py;
2. train it through tools/train.py (mmengine's progress is shown);
3. evaluate the final checkpoint through tools/test.py;
4. draw its predictions on a few validation images next to the ground truth (mmdet's / mmseg's visualizer).

Metrics are read from the JSON file that tools/test.py (mmengine's LoggerHook) writes into its work dir, the
loss curves from mmengine's ``vis_data/scalars.json``. Ends with a summary table (untrained vs trained, times)
and the paths of the pictures, all under ``--work-dir``.

    python tools/demo.py [--iters N] [--work-dir work_dirs/demo] [--num-images 4]

``--iters`` shortens (or lengthens) training: every LR-scheduler entry that ends at the config's ``max_iters``
is stretched to the new length.
"""
import argparse
import glob
import json
import os
import os.path as osp
import shutil
import subprocess
import sys
import time
from collections import deque

REPO = osp.dirname(osp.dirname(osp.abspath(__file__)))
# (task, config, metrics shown in the summary)
JOBS = [
    ('detection', 'configs/demo/maskrcnn_demo_synthetic.py',
     ['coco/bbox_mAP', 'coco/bbox_mAP_50', 'coco/segm_mAP', 'coco/segm_mAP_50']),
    ('segmentation', 'configs/demo/upernet_demo_synthetic.py', ['mIoU', 'mAcc', 'aAcc']),
]
# mmengine log lines worth showing while a command runs
PROGRESS = ('Iter(train)', 'Iter(test)', 'Saving checkpoint')


def run(args):
    """Run a repository script with this interpreter, echo its progress, fail loudly with its log tail."""
    print('$ python ' + ' '.join(args), flush=True)
    env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get('PYTHONPATH', ''), PYTHONUNBUFFERED='1')
    tail = deque(maxlen=60)
    with subprocess.Popen([sys.executable] + args, cwd=REPO, env=env, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True, bufsize=1) as proc:
        for line in proc.stdout:
            tail.append(line)
            if any(key in line for key in PROGRESS):
                print('   ' + line.split(' - mmengine - INFO - ')[-1].rstrip()[:170], flush=True)
    if proc.returncode != 0:
        print(''.join(tail))
        raise SystemExit(f'command failed with exit code {proc.returncode}: {" ".join(args)}')


def schedule_options(cfg, iters):
    """``--cfg-options`` that train for ``iters`` iterations (default: the config's), save only the final
    checkpoint and skip the in-training validation (tools/test.py evaluates the checkpoint)."""
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


def build_model(cfg, checkpoint=None):
    """The config's model (in the config's default scope), initialised as training would initialise it (seeded)
    or loaded from ``checkpoint``; returns (model, test dataset)."""
    import mmsparse  # noqa: F401  (registers the backbones)
    from mmengine.registry import DATASETS, MODELS, init_default_scope
    from mmengine.runner import load_checkpoint, set_random_seed

    init_default_scope(cfg.default_scope)
    set_random_seed(cfg.get('randomness', {}).get('seed', 0))
    model = MODELS.build(cfg.model)
    if checkpoint is None:
        model.init_weights()
    else:
        load_checkpoint(model, checkpoint, map_location='cpu', logger='silent')
    return model.eval(), DATASETS.build(cfg.test_dataloader.dataset)


def save_untrained(cfg, path):
    """The initialised model's weights as an mmengine checkpoint, for tools/test.py."""
    from mmengine.runner import save_checkpoint, weights_to_cpu
    model, dataset = build_model(cfg)
    save_checkpoint({'state_dict': weights_to_cpu(model.state_dict()),
                     'meta': {'dataset_meta': dataset.metainfo, 'iter': 0}}, path)


def test_metrics(work_dir):
    """The metrics tools/test.py wrote: mmengine's LoggerHook dumps them to ``<work_dir>/<stamp>/<stamp>.json``."""
    found = sorted(path for path in glob.glob(osp.join(work_dir, '*', '*.json'))
                   if osp.basename(path) == osp.basename(osp.dirname(path)) + '.json')
    if not found:
        raise SystemExit(f'tools/test.py wrote no metrics JSON under {work_dir}')
    with open(found[-1]) as f:
        metrics = json.load(f)
    if not metrics:
        raise SystemExit(f'{found[-1]} holds no metrics')
    return metrics


def loss_curve(work_dir):
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


def plot_losses(curves, path):
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


def draw_predictions(cfg, checkpoint, num_images, path):
    """Ground truth (left) and prediction (right) of ``num_images`` validation images, drawn by the config's
    visualizer (mmdet's DetLocalVisualizer / mmseg's SegLocalVisualizer): one PNG per image in the folder
    ``path`` without its extension, and all of them, one row each, in ``path``."""
    import mmcv
    import numpy as np
    import torch
    from mmengine.dataset import pseudo_collate
    from mmengine.registry import VISUALIZERS

    model, dataset = build_model(cfg, checkpoint)
    if len(dataset) < num_images:
        raise SystemExit(f'the validation split has {len(dataset)} images, fewer than --num-images={num_images}')
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


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--iters', type=int, help='training iterations (default: each config\'s max_iters); '
                        'scheduler entries that end at max_iters are stretched to match')
    parser.add_argument('--work-dir', default='work_dirs/demo')
    parser.add_argument('--num-images', type=int, default=4, help='validation images drawn per model')
    args = parser.parse_args()
    if args.iters is not None and args.iters < 1:
        parser.error('--iters must be a positive integer')
    if args.num_images < 1:
        parser.error('--num-images must be a positive integer')

    from mmengine.config import Config
    start = time.time()
    work_root = osp.abspath(args.work_dir)
    os.makedirs(work_root, exist_ok=True)
    results, curves, pictures = {}, {}, {}
    for task, config, keys in JOBS:
        run(['tools/dataset_converters/make_synthetic.py', '--config', config, '--skip-existing'])
        cfg = Config.fromfile(osp.join(REPO, config))
        iters, options = schedule_options(cfg, args.iters)
        work = osp.join(work_root, task)
        shutil.rmtree(work, ignore_errors=True)  # only this run's files are read back
        os.makedirs(work)
        timer = time.time()
        untrained = osp.join(work, 'untrained.pth')
        save_untrained(cfg, untrained)
        run(['tools/test.py', config, untrained, '--work-dir', osp.join(work, 'test_untrained')])
        before = test_metrics(osp.join(work, 'test_untrained'))
        test_time = time.time() - timer

        timer = time.time()
        run(['tools/train.py', config, '--work-dir', osp.join(work, 'train'), '--cfg-options', *options])
        train_time = time.time() - timer

        checkpoint = osp.join(work, 'train', f'iter_{iters}.pth')
        run(['tools/test.py', config, checkpoint, '--work-dir', osp.join(work, 'test_trained')])
        after = test_metrics(osp.join(work, 'test_trained'))
        missing = [k for k in keys if k not in after or k not in before]
        if missing:
            raise SystemExit(f'{task}: tools/test.py reported no {missing}')
        results[task] = dict(metrics=[(k, before[k], after[k]) for k in keys], iters=iters,
                             train_time=train_time, test_time=test_time)
        curves[task] = loss_curve(osp.join(work, 'train'))
        pictures[task] = osp.join(work_root, f'{task}_predictions.png')
        draw_predictions(cfg, checkpoint, args.num_images, pictures[task])

    loss_png = osp.join(work_root, 'training_loss.png')
    plot_losses(curves, loss_png)
    print('\n== mmsparse demo: synthetic data, reduced BiFormer backbones trained from scratch (seeded) ==')
    print(f'{"task":<13} {"metric":<17} {"untrained":>10} {"trained":>10}')
    for task, result in results.items():
        for key, before, after in result['metrics']:
            fmt = '{:10.3f}' if key.startswith('coco/') else '{:10.2f}'
            print(f'{task:<13} {key:<17} {fmt.format(before)} {fmt.format(after)}')
        print(f'{task:<13} {"train time":<17} {"":>10} {result["train_time"]:9.0f}s  ({result["iters"]} iterations)')
    print(f'total time {time.time() - start:.0f}s')
    print(f'training loss curves: {loss_png}')
    for task, path in pictures.items():
        print(f'{task} predictions (ground truth | prediction, {args.num_images} validation images): {path}')


if __name__ == '__main__':
    main()
