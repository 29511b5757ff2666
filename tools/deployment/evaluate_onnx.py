"""Evaluate an exported graph on the config's test set with the torch-free runtime, next to PyTorch.

    python tools/deployment/evaluate_onnx.py CONFIG MODEL.onnx [--checkpoint CKPT] [--out-dir DIR]
        [--threads N] [--cfg-options KEY=VALUE ...]

Every image of the config's test dataset (the files its annotation names) is read, preprocessed, run and
post-processed by ``mmsparse_ort`` (numpy, OpenCV, ONNX Runtime); the predictions go to the config's
``test_evaluator`` (mmdet's CocoMetric, mmseg's IoUMetric). With ``--checkpoint`` the same config is tested in
PyTorch (mmengine's Runner, as tools/test.py) and the metrics are printed side by side with their differences.
``DIR/metrics.json`` holds both (default DIR: work_dirs/evaluate_onnx/<config name>).
"""
import argparse
import json
import os
import os.path as osp
import sys

from mmengine.config import DictAction


def build_parser():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('config', help='the mmdet / mmseg config the graph was exported from')
    parser.add_argument('model', help='the exported ONNX file (segmentor, or detector with detections in the graph)')
    parser.add_argument('--checkpoint', help='also test this checkpoint in PyTorch and print the differences')
    parser.add_argument('--out-dir', help='where metrics.json (and the PyTorch test\'s logs) go')
    parser.add_argument('--threads', type=int, help='ONNX Runtime intra-op threads (default: ONNX Runtime\'s)')
    parser.add_argument('--cfg-options', nargs='+', action=DictAction, metavar='KEY=VALUE',
                        help='override config entries, as in tools/test.py')
    return parser


def argument_error(args):
    """The first argument that cannot work, as one line; None when all can."""
    if not osp.isfile(args.config):
        return f'config: no such file: {args.config}'
    if not osp.isfile(args.model):
        return f'model: no such ONNX file: {args.model}'
    if args.checkpoint is not None and not osp.isfile(args.checkpoint):
        return f'--checkpoint: no such file: {args.checkpoint}'
    if args.threads is not None and args.threads < 1:
        return f'--threads must be a positive integer, got {args.threads}'
    return None


def run(args):
    """Evaluate, print the table, write metrics.json; MetadataError (a ValueError) for a graph the runtime
    does not run."""
    from mmsparse.apis import load_config
    from mmsparse.deployment.evaluate import metric_table, onnx_metrics, pytorch_metrics
    cfg = load_config(args.config, args.cfg_options)
    out_dir = args.out_dir or osp.join('work_dirs', 'evaluate_onnx', osp.splitext(osp.basename(args.config))[0])
    os.makedirs(out_dir, exist_ok=True)
    got = onnx_metrics(cfg, args.model, args.threads)
    ref = pytorch_metrics(cfg, args.checkpoint, osp.join(out_dir, 'pytorch')) if args.checkpoint else None
    report = dict(config=args.config, model=args.model, checkpoint=args.checkpoint, images=got.images,
                  onnxruntime=got.metrics, pytorch=ref)
    if got.per_image:
        report['detections'] = got.detections
        report['detections_per_image'] = got.per_image
    if got.notes:
        report['notes'] = got.notes
    with open(osp.join(out_dir, 'metrics.json'), 'w') as f:
        json.dump(report, f, indent=1)
    counted = f', {got.detections} detections' if got.per_image else ''
    print(f'{got.images} images{counted}; metrics in {osp.join(out_dir, "metrics.json")}')
    print(metric_table(got.metrics, ref))
    for note in got.notes:
        print(f'note: {note}')


def main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    problem = argument_error(args)
    if problem is None:
        try:
            run(args)
            return 0
        except (FileNotFoundError, ValueError) as err:  # a graph the runtime refuses, a graph of another task
            problem = str(err)
    parser.error(problem)  # usage and the one-line message on stderr, exit status 2


if __name__ == '__main__':
    sys.exit(main())
