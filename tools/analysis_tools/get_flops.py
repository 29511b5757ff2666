"""Print the parameters and FLOPs of a config's model (mmengine's complexity analysis, via mmsparse's helper).

    python tools/analysis_tools/get_flops.py CONFIG [--shape H W]

Detectors and segmentors are measured on their tensor forward (backbone + neck + head ``_forward``, no
post-processing); a config whose ``model`` is a backbone is measured on the backbone. The input is one image of
``H x W`` (default 800 x 1333), padded up to the model's ``pad_size_divisor`` as mmdet's data preprocessor does.
FLOPs are multiply-adds (mmengine's unit, as in OpenMMLab's tables). A two-stage detector's RoI head runs on
the RPN's test-time proposals (up to 1000 per image on random weights), which dominates its count.
Pretrained weights are not loaded (weights do not change the counts). The summary lists the top-level
modules and the total of every ``SparseAttnBlock`` (mmsparse's attention plug-ins).
"""
import argparse

from mmengine.config import DictAction

from mmsparse.apis import load_config
from mmsparse.benchmark.flops import build_measured, summary


def parse_args():
    parser = argparse.ArgumentParser(description='Params and FLOPs of a config\'s model')
    parser.add_argument('config', help='config file')
    parser.add_argument('--shape', type=int, nargs=2, default=[800, 1333], metavar=('H', 'W'),
                        help='input image size (default: 800 1333)')
    parser.add_argument('--cfg-options', nargs='+', action=DictAction, metavar='KEY=VALUE',
                        help='override config entries, e.g. model.neck.attn_levels=[3]')
    return parser.parse_args()


def main():
    args = parse_args()
    cfg = load_config(args.config, args.cfg_options)
    module, x, what = build_measured(cfg, args.shape)
    print('\n'.join(summary(args.config, module, x, what)))


if __name__ == '__main__':
    main()
