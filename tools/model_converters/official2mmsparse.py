"""Convert an official BiFormer / CloFormer / STViT checkpoint to an mmsparse checkpoint.

    python tools/model_converters/official2mmsparse.py biformer biformer_small_best.pth biformer_s_mmsparse.pth

Classification checkpoints (``{'model': ...}``) become backbone weights stored as
``{'state_dict': {'backbone.<key>': tensor}}``, to be used with
``init_cfg=dict(type='Pretrained', checkpoint=DST, prefix='backbone.')``. The authors' detection /
segmentation checkpoints (keys ``backbone.*``) become whole mmdet 3.x / mmseg 1.x checkpoints (``load_from``).
The source is read with ``weights_only=True``; the output holds tensors and plain values only.
"""
import argparse
import os
import os.path as osp

import torch

from mmsparse.converters import FAMILIES, convert_checkpoint
from mmsparse.utils.checkpoint import load_checkpoint_file


def parse_args():
    parser = argparse.ArgumentParser(description='Convert an official checkpoint to mmsparse keys')
    parser.add_argument('family', choices=sorted(FAMILIES), help='model family')
    parser.add_argument('src', help='official checkpoint file')
    parser.add_argument('dst', help='output file')
    parser.add_argument('--ema', action='store_true', help='convert the "model_ema" weights')
    return parser.parse_args()


def main():
    args = parse_args()
    if not osp.isfile(args.src):
        raise SystemExit(f'src: no such file: {args.src}')
    ckpt = load_checkpoint_file(args.src)
    out = convert_checkpoint(args.family, ckpt, use_ema=args.ema)
    if osp.dirname(args.dst):
        os.makedirs(osp.dirname(args.dst), exist_ok=True)  # e.g. checkpoints/ on a fresh clone
    torch.save(out, args.dst)
    n = sum(v.numel() for v in out['state_dict'].values())
    print(f'wrote {len(out["state_dict"])} tensors ({n:,} values) to {args.dst}')


if __name__ == '__main__':
    main()
