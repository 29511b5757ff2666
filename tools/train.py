"""Train an mmdet or mmseg model (chosen by the config's ``default_scope``) with mmsparse's modules.

    python tools/train.py configs/biformer/maskrcnn_biformer_s_coco.py [--amp] [--resume] [--work-dir DIR]
    bash tools/dist_train.sh CONFIG NUM_PROCS [args]        # PyTorch DDP (torchrun)
"""
import argparse
import os.path as osp

from mmengine.config import DictAction
from mmengine.registry import RUNNERS
from mmengine.runner import Runner

from mmsparse.apis import (amp_fallback_on_cpu, check_backbone_outputs, check_data, check_pretrained,
                           check_torchvision, load_tool_config, run_tool)


def parse_args():
    parser = argparse.ArgumentParser(description='Train a detector or segmentor')
    parser.add_argument('config', help='train config file path')
    parser.add_argument('--work-dir', help='the dir to save logs and models')
    parser.add_argument('--amp', action='store_true', help='enable automatic mixed precision training')
    parser.add_argument('--auto-scale-lr', action='store_true',
                        help='scale the learning rate by actual batch / auto_scale_lr.base_batch_size')
    parser.add_argument('--resume', nargs='?', type=str, const='auto',
                        help='resume from the given checkpoint, or without a value from the latest one in work_dir')
    parser.add_argument('--cfg-options', nargs='+', action=DictAction,
                        help='override settings in the config, key=value (e.g. model.backbone.drop_path_rate=0.1)')
    parser.add_argument('--launcher', choices=['none', 'pytorch', 'slurm', 'mpi'], default='none')
    parser.add_argument('--local_rank', '--local-rank', type=int, default=0)
    return parser.parse_args()


def main():
    args = parse_args()
    cfg, task = load_tool_config(args)

    if args.amp:
        wrapper = cfg.optim_wrapper.get('type', 'OptimWrapper')
        if wrapper == 'AmpOptimWrapper':
            print('AMP is already enabled in the config; keeping its settings (e.g. a static loss_scale).')
        else:
            if wrapper != 'OptimWrapper':
                raise SystemExit(f'--amp needs optim_wrapper.type OptimWrapper or AmpOptimWrapper, got {wrapper}')
            cfg.optim_wrapper.type = 'AmpOptimWrapper'
            cfg.optim_wrapper.loss_scale = 'dynamic'

    amp_fallback_on_cpu(cfg)

    if args.auto_scale_lr:
        if 'auto_scale_lr' not in cfg or 'base_batch_size' not in cfg.auto_scale_lr:
            raise SystemExit('--auto-scale-lr needs auto_scale_lr=dict(base_batch_size=...) in the config')
        cfg.auto_scale_lr.enable = True

    if args.resume == 'auto':
        cfg.resume, cfg.load_from = True, None
    elif args.resume is not None:
        if not osp.isfile(args.resume):
            raise SystemExit(f'--resume: no such checkpoint file: {args.resume}')
        cfg.resume, cfg.load_from = True, args.resume

    check_torchvision(cfg)
    check_data(cfg, ['train_dataloader', 'val_dataloader'] if cfg.get('val_cfg') else ['train_dataloader'])
    if not (cfg.get('resume') or cfg.get('load_from')):
        check_pretrained(cfg)
    check_backbone_outputs(cfg, distributed=args.launcher != 'none')
    runner = Runner.from_cfg(cfg) if 'runner_type' not in cfg else RUNNERS.build(cfg)
    runner.train()
    print(f'[{task}] training finished; work_dir: {cfg.work_dir}')


if __name__ == '__main__':
    run_tool(main)
