"""The main job on the embedded default: generate the synthetic data if missing, train the demo Mask R-CNN and
UPerNet (reduced BiFormer backbones, from scratch) through tools/train.py, evaluate the final checkpoints through
tools/test.py, and print COCO bbox/segm AP and mIoU.

    python tools/demo.py [--iters 300] [--work-dir work_dirs/demo]
"""
import argparse
import ast
import os
import os.path as osp
import re
import subprocess
import sys

from mmengine.config import Config

REPO = osp.dirname(osp.dirname(osp.abspath(__file__)))
# (task, config, metrics to report); the iterations are the configs' own (train_cfg.max_iters)
JOBS = [
    ('detection', 'configs/demo/maskrcnn_demo_synthetic.py',
     ['coco/bbox_mAP', 'coco/bbox_mAP_50', 'coco/segm_mAP', 'coco/segm_mAP_50']),
    ('segmentation', 'configs/demo/upernet_demo_synthetic.py', ['mIoU', 'aAcc']),
]


def run(args):
    print('$ ' + ' '.join(args), flush=True)
    env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get('PYTHONPATH', ''))
    proc = subprocess.run([sys.executable] + args, cwd=REPO, env=env, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True)
    log = proc.stdout
    for line in log.splitlines():
        if 'Iter(train)' in line or 'Iter(test)' in line:
            print('   ' + line.split(' - mmengine - INFO - ')[-1][:160], flush=True)
    if proc.returncode != 0:
        print(log[-5000:])
        raise SystemExit(f'command failed with exit code {proc.returncode}')
    return log


def parse_metrics(log):
    match = re.search(r'test metrics: (\{.*\})', log)
    if not match:
        raise SystemExit('tools/test.py printed no metrics')
    text = re.sub(r'np\.float\d+\(([^)]*)\)', r'\1', match.group(1))
    return ast.literal_eval(text)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--iters', type=int, help='override the configs\' training iterations (1000 for the '
                        'detector, 600 for the segmentor); the LR schedules are stretched to match')
    parser.add_argument('--work-dir', default='work_dirs/demo')
    args = parser.parse_args()

    run(['tools/dataset_converters/make_synthetic.py', '--skip-existing'])
    results = {}
    for task, config, keys in JOBS:
        iters = args.iters or Config.fromfile(osp.join(REPO, config)).train_cfg.max_iters
        work = osp.join(args.work_dir, task)
        options = [f'train_cfg.max_iters={iters}', f'train_cfg.val_interval={iters}',
                   f'default_hooks.checkpoint.interval={iters}', f'param_scheduler.1.end={iters}']
        if 'maskrcnn' in config:
            options.append(f'param_scheduler.1.T_max={iters}')
        run(['tools/train.py', config, '--work-dir', work, '--cfg-options', *options])
        ckpt = osp.join(work, f'iter_{iters}.pth')
        metrics = parse_metrics(run(['tools/test.py', config, ckpt, '--work-dir', osp.join(work, 'test')]))
        results[task] = {k: metrics[k] for k in keys}

    print('\n== mmsparse demo: synthetic data, reduced BiFormer backbones trained from scratch ==')
    for task, values in results.items():
        print(f'{task:>13}: ' + '  '.join(f'{k} = {v:.3f}' if 'coco' in k else f'{k} = {v:.2f}'
                                          for k, v in values.items()))


if __name__ == '__main__':
    main()
