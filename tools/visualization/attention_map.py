"""Draw what the sparse attention of a BiFormer, STViT or CloFormer backbone looks at, on one image.

    python tools/visualization/attention_map.py CONFIG IMAGE --out-dir DIR [--checkpoint CKPT] \
        [--points X,Y ...] [--stages 0 1 ...] [--block -1] [--size 448] [--multiple 32]

CONFIG is any config whose ``model.backbone`` holds mmsparse operators: an mmsparse config, or a stock mmdet /
mmseg one that imports mmsparse through ``custom_imports``. Only the backbone is built; the image is resized
(longer side ``--size``, both sides multiples of ``--multiple``) and normalised as the config's
``data_preprocessor``. BRA pads maps that ``n_win`` does not divide; routed regions that lie wholly in that
padding cannot be drawn, and the captions count them (``--multiple 128`` avoids them for ``n_win=8``).

- BiFormer: per query point, the query's region (cyan), its top-k routed regions (yellow) and the heat map of
  the query token's attention over the tokens of those regions (other regions untouched);
- STViT: the super token every pixel is most associated with (one colour per super token);
- CloFormer: per query point, the global branch's attention over its pooled keys, and a zoom on the local
  branch's weights |gate * W| over the k x k neighbourhood of the query (one per local group).

Query points are ``x,y`` pixels of the input image; by default the centre and the two most textured quadrants'
strongest edges. Without ``--checkpoint`` the weights are random, and every picture says so.

Writes ``DIR/stage{i}.png`` per drawn stage, ``DIR/sheet.png`` with all of them, and ``DIR/attention_map.json``
(what was drawn where: panel boxes, query regions and routed regions, ...).
"""
import argparse
import json
import os
import os.path as osp
import sys
import warnings


def parse_point(text):
    try:
        x, y = (int(round(float(v))) for v in text.split(','))
    except ValueError:
        raise argparse.ArgumentTypeError(f'a point is X,Y in pixels (e.g. 120,80), got {text!r}')
    return x, y


def build_parser():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('config', help='config whose model.backbone holds mmsparse attention operators')
    parser.add_argument('image', help='input image')
    parser.add_argument('--out-dir', required=True, help='folder for the PNGs and attention_map.json')
    parser.add_argument('--checkpoint', help='mmdet / mmseg / mmsparse / authors\' checkpoint (default: random)')
    parser.add_argument('--points', nargs='+', type=parse_point, metavar='X,Y',
                        help='query pixels of the input image (default: centre + 2 salient points)')
    parser.add_argument('--stages', nargs='+', type=int, help='stages to draw (default: all)')
    parser.add_argument('--block', type=int, default=-1, help='attention block of each stage (default: last)')
    parser.add_argument('--size', type=int, default=448,
                        help='longer side of the network input, rounded to multiples of 32 (default 448)')
    parser.add_argument('--multiple', type=int, default=32,
                        help='both input sides are multiples of this (default 32). BiFormer: stride x n_win of '
                             'its stage 2 (e.g. 128 for n_win=8) leaves no region in the auto-padding')
    parser.add_argument('--seed', type=int, default=0, help='seed of the random weights and the colours')
    return parser


def run(args):
    import cv2
    import torch

    from mmsparse.visualization import (attention_maps, default_points, load_backbone, preprocess, read_image,
                                        resize_for_model, scale_points)
    from mmsparse.visualization.drawing import compose, contact_sheet

    image = read_image(args.image)
    torch.manual_seed(args.seed)
    backbone, cfg = load_backbone(args.config, args.checkpoint)
    img = resize_for_model(image, args.size, args.multiple)
    if args.points:
        points = scale_points(args.points, image.shape[:2], img.shape[:2])
    else:
        points = default_points(img)
    x = preprocess(img, cfg)
    maps, skipped = attention_maps(backbone, img, x, points, stages=args.stages, block=args.block, seed=args.seed)
    if not maps:
        raise ValueError(f'nothing to draw: {skipped}')

    weights = (f'weights: {osp.basename(args.checkpoint)}' if args.checkpoint
               else 'RANDOM WEIGHTS (no --checkpoint): the maps show the mechanism, not a trained model')
    os.makedirs(args.out_dir, exist_ok=True)
    report = dict(config=args.config, image=args.image, checkpoint=args.checkpoint, weights=weights,
                  input_hw=list(img.shape[:2]), points=[list(p) for p in points],
                  skipped={str(k): v for k, v in skipped.items()}, stages=[])
    pictures, titles = [], []
    for sm in maps:
        title = f'{type(backbone).__name__} stage {sm.stage} (stride {sm.stride}, block {sm.block}: {sm.name})'
        canvas, boxes = compose(sm.panels, sm.captions, [title, sm.summary, weights])
        path = osp.join(args.out_dir, f'stage{sm.stage}.png')
        if not cv2.imwrite(path, canvas, [cv2.IMWRITE_PNG_COMPRESSION, 9]):
            raise OSError(f'cannot write {path}')
        pictures.append(canvas)
        titles.append(f'stage {sm.stage}: {sm.summary}')
        report['stages'].append(dict(stage=sm.stage, stride=sm.stride, block=sm.block, family=sm.family,
                                     operator=sm.name, file=osp.basename(path),
                                     panels=[dict(m, box=list(b)) for m, b in zip(sm.meta, boxes)]))
        print(f'wrote {path}: {sm.summary}')
    sheet = osp.join(args.out_dir, 'sheet.png')
    contact_sheet(pictures, titles, f'{osp.basename(args.config)} on {osp.basename(args.image)} - {weights}', sheet)
    with open(osp.join(args.out_dir, 'attention_map.json'), 'w') as f:
        json.dump(report, f, indent=1)
    for stage, reason in skipped.items():
        print(f'stage {stage} not drawn: {reason}')
    print(f'wrote {sheet} and attention_map.json; input {img.shape[1]}x{img.shape[0]}, points {points}')
    return report


def main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    warnings.filterwarnings('ignore', message='pkg_resources is deprecated')
    try:
        run(args)
    except (FileNotFoundError, ValueError) as err:
        parser.error(str(err))  # usage and the message on stderr, exit status 2
    return 0


if __name__ == '__main__':
    sys.exit(main())
