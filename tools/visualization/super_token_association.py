"""Draw which super token every pixel belongs to, for one STViT stage, as a coloured overlay PNG.

Each pixel of the stage's feature map is assigned the super token with the largest final association weight
(the argmax over its 9 neighbouring super tokens, :meth:`SuperTokenAttention.assignment`); the label map is
upsampled to the image size with nearest neighbours, coloured, blended over the image, and the super-token
borders are drawn in white.

    # from an mmdet / mmseg config and checkpoint (the backbone must be an STViT)
    python tools/visualization/super_token_association.py demo.jpg out.png --config CFG --checkpoint CKPT
    # from an arch, with random weights or the authors' / a converted checkpoint
    python tools/visualization/super_token_association.py demo.jpg out.png --arch small \
        --checkpoint stvit-small-224.pth --stage 0 --block -1

Stages with super-token size 1 (global attention) have no super tokens and are refused.
"""
import argparse
import os.path as osp
import sys

import cv2
import numpy as np
import torch

IMAGENET_MEAN = (123.675, 116.28, 103.53)
IMAGENET_STD = (58.395, 57.12, 57.375)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description='Overlay the STViT super-token assignment on an image')
    parser.add_argument('image', help='input image (anything cv2.imread reads)')
    parser.add_argument('out', help='output PNG')
    src = parser.add_mutually_exclusive_group()
    src.add_argument('--config', help='mmdet / mmseg config whose model.backbone is an STViT')
    src.add_argument('--arch', default='small', help='STViT arch when no config is given (default: small)')
    parser.add_argument('--checkpoint', help='mmsparse / mmdet / mmseg / official STViT checkpoint (optional)')
    parser.add_argument('--stage', type=int, default=0, help='stage index 0-3 (default 0)')
    parser.add_argument('--block', type=int, default=-1, help='block index inside the stage (default: last)')
    parser.add_argument('--stoken-size', type=int, nargs='+',
                        help='override the super-token size per stage (4 values), e.g. 16 8 1 1')
    parser.add_argument('--size', type=int, nargs=2, metavar=('H', 'W'),
                        help='resize the image to H W before inference (default: keep)')
    parser.add_argument('--alpha', type=float, default=0.5, help='overlay opacity in [0, 1] (default 0.5)')
    parser.add_argument('--seed', type=int, default=0, help='seed for random weights and colours')
    return parser.parse_args(argv)


def build_backbone(config=None, arch='small', checkpoint=None, stoken_size=None):
    """An STViT in eval mode from a config's ``model.backbone`` or from ``arch``, optionally with weights."""
    import mmsparse  # noqa: F401  (registers STViT)
    from mmsparse.converters import load_pretrained
    from mmsparse.models import STViT
    kwargs = {}
    if config is not None:
        from mmengine.config import Config
        cfg = Config.fromfile(config).model.backbone.to_dict()
        cfg.pop('_delete_', None)
        kind = str(cfg.pop('type', '')).split('.')[-1]
        if kind != 'STViT':
            raise SystemExit(f'--config: model.backbone.type is {kind!r}, not STViT')
        cfg.pop('init_cfg', None)
        kwargs.update(cfg)
    else:
        kwargs['arch'] = arch
    if stoken_size is not None:
        kwargs['stoken_size'] = stoken_size
    backbone = STViT(**kwargs)
    if checkpoint is not None:
        from mmsparse.converters import load_checkpoint_file, unwrap_state_dict
        sd = unwrap_state_dict(load_checkpoint_file(checkpoint))
        prefix = 'backbone.' if any(k.startswith('backbone.') for k in sd) else None
        load_pretrained(backbone, sd, prefix=prefix, family='stvit')
    return backbone.eval()


@torch.no_grad()
def stage_assignment(backbone, image, stage=0, block=-1):
    """Super-token label map of ``stage`` / ``block`` for an (H, W, 3) BGR uint8 image.

    Returns:
        np.ndarray: (h, w) int64 labels at the stage's resolution (-1 for out-of-grid argmaxes).
    """
    if not 0 <= stage < backbone.num_stages:
        raise ValueError(f'stage must be in [0, {backbone.num_stages - 1}], got {stage}')
    blocks = backbone.stages[stage].blocks
    if not -len(blocks) <= block < len(blocks):
        raise ValueError(f'block must be in [{-len(blocks)}, {len(blocks) - 1}] for stage {stage}, got {block}')
    target = blocks[block]
    if target.attn.is_global:
        raise ValueError(f'stage {stage} uses super-token size 1 (global attention): no super tokens to draw; '
                         'pick another stage or pass --stoken-size')
    captured = {}

    def hook(module, args):
        captured['label'] = module.assignment(args[0])

    rgb = image[:, :, ::-1].astype(np.float32)
    x = (rgb - np.array(IMAGENET_MEAN, np.float32)) / np.array(IMAGENET_STD, np.float32)
    x = torch.from_numpy(np.ascontiguousarray(x.transpose(2, 0, 1)))[None]
    handle = target.attn.register_forward_pre_hook(hook)
    try:
        backbone.forward_stages(x)
    finally:
        handle.remove()
    return captured['label'][0].cpu().numpy()


def render_overlay(image, labels, alpha=0.5, seed=0):
    """Blend a random colour per super-token label over ``image`` and draw label borders in white."""
    import matplotlib
    if not 0 <= alpha <= 1:
        raise ValueError(f'alpha must be in [0, 1], got {alpha}')
    hgt, wdt = image.shape[:2]
    up = cv2.resize(labels.astype(np.int32), (wdt, hgt), interpolation=cv2.INTER_NEAREST)
    n = int(up.max()) + 2
    rng = np.random.default_rng(seed)
    cmap = matplotlib.colormaps['hsv']
    palette = (np.array([cmap(v)[:3] for v in rng.permutation(n) / n]) * 255)[:, ::-1]  # RGB -> BGR
    palette[0] = 0  # label -1 (shifted to 0): black
    colour = palette[up + 1].astype(np.float32)
    out = (1 - alpha) * image.astype(np.float32) + alpha * colour
    border = np.zeros((hgt, wdt), bool)
    border[:, 1:] |= up[:, 1:] != up[:, :-1]
    border[1:, :] |= up[1:, :] != up[:-1, :]
    out[border] = 255
    return out.clip(0, 255).astype(np.uint8)


def main(argv=None):
    args = parse_args(argv)
    if not osp.isfile(args.image):
        raise SystemExit(f'image: no such file: {args.image}')
    image = cv2.imread(args.image, cv2.IMREAD_COLOR)
    if image is None:
        raise SystemExit(f'image: cv2 cannot read {args.image}')
    if args.size is not None:
        image = cv2.resize(image, (args.size[1], args.size[0]), interpolation=cv2.INTER_LINEAR)
    torch.manual_seed(args.seed)
    backbone = build_backbone(args.config, args.arch, args.checkpoint, args.stoken_size)
    try:
        labels = stage_assignment(backbone, image, args.stage, args.block)
    except ValueError as err:
        raise SystemExit(str(err))
    overlay = render_overlay(image, labels, args.alpha, args.seed)
    if not cv2.imwrite(args.out, overlay):
        raise SystemExit(f'out: cv2 could not write {args.out}')
    n = len(np.unique(labels[labels >= 0]))
    print(f'wrote {args.out}: {overlay.shape[1]}x{overlay.shape[0]}, stage {args.stage}, '
          f'{n} super tokens used, feature map {labels.shape[0]}x{labels.shape[1]}')


if __name__ == '__main__':
    sys.exit(main())
