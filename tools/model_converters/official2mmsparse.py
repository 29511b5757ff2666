"""Convert an official BiFormer / CloFormer / STViT checkpoint to an mmsparse checkpoint.

    python tools/model_converters/official2mmsparse.py biformer biformer_small_best.pth biformer_s_mmsparse.pth
    python tools/model_converters/official2mmsparse.py FAMILY SRC DST --backbone-args '{"arch": {...}}'

Classification checkpoints (``{'model': ...}``) become backbone weights stored as
``{'state_dict': {'backbone.<key>': tensor}}``, to be used with
``init_cfg=dict(type='Pretrained', checkpoint=DST, prefix='backbone.')``. The authors' detection /
segmentation checkpoints (keys ``backbone.*``) become whole mmdet 3.x / mmseg 1.x checkpoints (``load_from``).
The source is read with ``weights_only=True``; the output holds tensors and plain values only. The converted
backbone keys must fill one published variant of the family exactly (output norms aside): a fragment or another
model's file is refused with the missing and unexpected keys, before anything is written.
"""
import argparse
import json
import os
import os.path as osp
import sys

import torch

from mmsparse.converters import FAMILIES, convert_checkpoint
from mmsparse.converters.check import match_variant
from mmsparse.utils.checkpoint import load_checkpoint_file


def json_object(text):
    """``--backbone-args``: a JSON object."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError as err:
        raise argparse.ArgumentTypeError(f'not valid JSON ({err}): {text!r}')
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(f'expected a JSON object of keyword arguments, got {text!r}')
    return value


def build_parser():
    parser = argparse.ArgumentParser(description='Convert an official checkpoint to mmsparse keys')
    parser.add_argument('family', choices=sorted(FAMILIES), help='model family')
    parser.add_argument('src', help='official checkpoint file')
    parser.add_argument('dst', help='output file')
    parser.add_argument('--ema', action='store_true', help='convert the "model_ema" weights')
    parser.add_argument('--backbone-args', type=json_object, metavar='JSON',
                        help='for a model of unpublished size: the mmsparse backbone\'s keyword arguments as JSON, '
                        'e.g. \'{"arch": {"embed_dims": [32, 64, 128, 256], "depths": [1, 1, 2, 1]}}\'; the '
                        'converted keys are checked against it instead of the published variants')
    return parser


def run(args):
    if not osp.isfile(args.src):
        raise FileNotFoundError(f'src: no such file: {args.src}')
    ckpt = load_checkpoint_file(args.src)
    out = convert_checkpoint(args.family, ckpt, use_ema=args.ema)
    backbone = {k[len('backbone.'):]: v for k, v in out['state_dict'].items() if k.startswith('backbone.')}
    arch = match_variant(args.family, backbone, args.backbone_args)
    folder = osp.dirname(osp.abspath(args.dst))
    if not osp.isdir(folder):
        print(f'creating the output folder {folder}')  # e.g. checkpoints/ on a fresh clone
        os.makedirs(folder)
    torch.save(out, args.dst)
    n = sum(v.numel() for v in out['state_dict'].values())
    print(f'wrote {len(out["state_dict"])} tensors ({n:,} values) to {args.dst} ({args.family}: {arch})')


def main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        run(args)
    except (OSError, ValueError, KeyError, TypeError) as err:  # CheckpointFileError is a ValueError
        parser.error(str(err.args[0]) if isinstance(err, KeyError) and err.args else str(err))
    return 0


if __name__ == '__main__':
    sys.exit(main())
