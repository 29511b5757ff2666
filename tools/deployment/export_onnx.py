"""Export an mmdet / mmseg config's model (or its backbone) to ONNX, and optionally check it against PyTorch.

    python tools/deployment/export_onnx.py CONFIG [--checkpoint CKPT] --out FILE.onnx --shape H W \\
        [--dynamic] [--verify] [--backbone-only] [--batch B] [--outputs raw|mmdeploy|efficientnms]
        [--masks full|roi] [--cfg-options KEY=VALUE ...]

The graph takes ``input`` [B, 3, H, W] (the image after the data preprocessor; end-to-end detectors also take
``img_shape`` [B, 2], each image's H, W before padding, to which the boxes are clipped) and returns ``feat0``...
(--backbone-only), ``seg_logits`` (segmentors) or detections (detectors: ``dets``, ``labels`` and, for Mask
R-CNN, ``masks`` by default; TensorRT EfficientNMS's outputs with --outputs efficientnms; the head's raw outputs or
the neck's outputs with --outputs raw); docs/deployment.md has the contract. ``--dynamic`` makes batch,
height and width symbolic; ``--verify`` runs ONNX Runtime against PyTorch at the export size (and, with
--dynamic, at a size that no window grid divides) and prints the comparison; it exits 1 when they differ.
"""
import argparse
import os
import os.path as osp
import sys
from functools import partial

from mmengine.config import DictAction


def build_parser():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('config', help='mmdet / mmseg config')
    parser.add_argument('--checkpoint', help='weights (default: the initialised model, for checking the export)')
    parser.add_argument('--out', required=True, help='the ONNX file to write')
    parser.add_argument('--shape', type=int, nargs=2, required=True, metavar=('H', 'W'), help='export input size')
    parser.add_argument('--batch', type=int, default=1, help='export batch (fixed graphs only). Default 1')
    parser.add_argument('--dynamic', action='store_true', help='symbolic batch, height and width')
    parser.add_argument('--verify', action='store_true', help='compare ONNX Runtime with PyTorch and print it')
    parser.add_argument('--backbone-only', action='store_true', help='export the backbone: feat0 ... feat3')
    parser.add_argument('--outputs', choices=('raw', 'mmdeploy', 'efficientnms'),
                        help='detector outputs: detections with NMS in the graph (mmdeploy: dets, labels; '
                        'efficientnms: TensorRT EfficientNMS names) or the raw head / neck outputs. Default: mmdeploy '
                        'for detectors, raw otherwise')
    parser.add_argument('--masks', choices=('full', 'roi'), default='full',
                        help='Mask R-CNN end to end: masks [B, N, H, W] pasted into the input (full, default) or '
                        'the mask head\'s [B, N, 28, 28] RoI masks (roi); probabilities either way')
    parser.add_argument('--cfg-options', nargs='+', action=DictAction, metavar='KEY=VALUE',
                        help='override config entries, as in tools/test.py')
    return parser


def verify_sizes(shape, dynamic):
    """The export size, and with --dynamic one more that is not a multiple of 32 (padded inside the model)."""
    h, w = shape
    return [(h, w)] + ([(h + 23, w - 9 if w - 9 >= 32 else w + 9)] if dynamic else [])


def run(args):
    from mmsparse.deployment import build_model, end2end, export_onnx, graph_ops, load_config, model_kind, verify
    from mmsparse.deployment.metadata import runtime_meta
    if args.batch < 1:
        raise ValueError(f'--batch must be a positive integer, got {args.batch}')
    out_dir = osp.dirname(osp.abspath(args.out))
    if not osp.isdir(out_dir):
        raise FileNotFoundError(f'--out: folder {out_dir} does not exist')
    cfg = load_config(args.config, args.cfg_options)
    model = build_model(cfg, args.checkpoint)
    kind = model_kind(model, args.backbone_only)
    if args.checkpoint is None:
        print('no --checkpoint: exporting the initialised model (random weights; checks the export only)')
    layout = args.outputs or ('mmdeploy' if kind in ('single_stage', 'two_stage') else 'raw')
    end2end.check_layout(layout, kind)
    names = export_onnx(model, args.out, tuple(args.shape), kind, dynamic=args.dynamic, batch=args.batch,
                        extra_meta=dict(config=osp.abspath(args.config), checkpoint=args.checkpoint,
                                        **runtime_meta(cfg)), outputs=layout, masks=args.masks)
    print(f'wrote {args.out} ({kind}, {"dynamic" if args.dynamic else "fixed"} shape, outputs: {", ".join(names)})')
    print('ONNX ops: ' + ', '.join(f'{op} x{n}' for op, n in graph_ops(args.out).items()))
    if args.verify:
        check = verify if layout == 'raw' else partial(end2end.verify, layout=layout)
        try:
            check(model, args.out, verify_sizes(args.shape, args.dynamic), batch=args.batch)
        except AssertionError as err:
            print(err, file=sys.stderr)
            return 1
        print('verify: ONNX Runtime matches PyTorch')
    return 0


def main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return run(args)
    except (FileNotFoundError, ValueError) as err:
        parser.error(str(err))  # usage and the message on stderr, exit status 2


if __name__ == '__main__':
    os.environ.setdefault('TORCHDYNAMO_VERBOSE', '0')
    sys.exit(main())
