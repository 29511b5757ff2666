"""Evaluate a trained mmdet or mmseg model (chosen by the config's ``default_scope``).

    python tools/test.py CONFIG CHECKPOINT [--out results.pkl] [--show-dir DIR] [--tta]
    bash tools/dist_test.sh CONFIG CHECKPOINT NUM_PROCS [args]
"""
import argparse
import os
import os.path as osp

from mmengine.config import ConfigDict, DictAction
from mmengine.registry import RUNNERS
from mmengine.runner import Runner

from mmsparse.apis import check_data, load_tool_config, run_tool


def parse_args():
    parser = argparse.ArgumentParser(description='Test (and evaluate) a detector or segmentor')
    parser.add_argument('config', help='test config file path')
    parser.add_argument('checkpoint', help='checkpoint file')
    parser.add_argument('--work-dir', help='the dir to save the evaluation metrics')
    parser.add_argument('--out', help='mmdet: pickle file of the raw results; mmseg: folder for the predictions')
    parser.add_argument('--show-dir', help='folder where painted predictions are saved')
    parser.add_argument('--cfg-options', nargs='+', action=DictAction,
                        help='override settings in the config, key=value')
    parser.add_argument('--tta', action='store_true',
                        help="test-time augmentation: the config's tta_model over its tta_pipeline (scales, flip)")
    parser.add_argument('--launcher', choices=['none', 'pytorch', 'slurm', 'mpi'], default='none')
    parser.add_argument('--local_rank', '--local-rank', type=int, default=0)
    return parser.parse_args()


def enable_visualization(cfg, task, show_dir):
    default = 'DetVisualizationHook' if task == 'mmdet' else 'SegVisualizationHook'
    if 'visualization' not in cfg.default_hooks:
        cfg.default_hooks['visualization'] = dict(type=default)
    hook = cfg.default_hooks['visualization']  # ConfigDict stores a converted copy: edit the stored one
    hook['draw'] = True
    if task == 'mmdet':
        hook['test_out_dir'] = show_dir
    else:
        hook['interval'] = 1  # mmseg's hook otherwise paints only every 50th test image
        cfg.visualizer['save_dir'] = show_dir


def use_tta(cfg, task):
    """Swap in the config's TTA model and pipeline, as mmdet's and mmseg's tools/test.py do."""
    missing = [key for key in ('tta_model', 'tta_pipeline') if key not in cfg]
    if missing:
        hint = (' mmdet 3.x has no test-time augmentation for instance masks (DetTTAModel merges boxes only).'
                if task == 'mmdet' and cfg.model.get('roi_head', {}).get('mask_head') else '')
        raise SystemExit(f'--tta: the config defines no {" / ".join(missing)}.{hint}')
    dataset = cfg.test_dataloader.dataset
    while 'dataset' in dataset:  # through wrappers (ConcatDataset / RepeatDataset style)
        dataset = dataset['dataset']
    dataset.pipeline = cfg.tta_pipeline
    cfg.model = ConfigDict(**cfg.tta_model, module=cfg.model)


def main():
    args = parse_args()
    cfg, task = load_tool_config(args)
    if not osp.isfile(args.checkpoint) and '://' not in args.checkpoint:
        raise SystemExit(f'checkpoint: no such file: {args.checkpoint}')

    cfg.load_from = args.checkpoint
    if args.show_dir:
        enable_visualization(cfg, task, args.show_dir)
    if args.tta:
        use_tta(cfg, task)
    if args.out:
        if task == 'mmdet':
            if not args.out.endswith(('.pkl', '.pickle')):
                raise SystemExit('--out: mmdet results are dumped as a pickle file (.pkl or .pickle)')
            evaluators = cfg.test_evaluator if isinstance(cfg.test_evaluator, list) else [cfg.test_evaluator]
            cfg.test_evaluator = list(evaluators) + [dict(type='DumpDetResults', out_file_path=args.out)]
        else:
            # mmseg's IoUMetric creates the folder on rank 0 only; under DDP another rank may write first
            os.makedirs(args.out, exist_ok=True)
            cfg.test_evaluator['output_dir'] = args.out
            cfg.test_evaluator['keep_results'] = True

    check_data(cfg, ['test_dataloader'])
    runner = Runner.from_cfg(cfg) if 'runner_type' not in cfg else RUNNERS.build(cfg)
    metrics = runner.test()
    print(f'[{task}] test metrics: {metrics}')


if __name__ == '__main__':
    run_tool(main)
