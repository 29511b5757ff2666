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
import math

import torch
import torch.nn as nn
from mmengine.config import Config, DictAction

from mmsparse.apis import drop_pretrained, fake_data_sample


def parse_args():
    parser = argparse.ArgumentParser(description='Params and FLOPs of a config\'s model')
    parser.add_argument('config', help='config file')
    parser.add_argument('--shape', type=int, nargs=2, default=[800, 1333], metavar=('H', 'W'),
                        help='input image size (default: 800 1333)')
    parser.add_argument('--cfg-options', nargs='+', action=DictAction, metavar='KEY=VALUE',
                        help='override config entries, e.g. model.neck.attn_levels=[3]')
    return parser.parse_args()


class TensorForward(nn.Module):
    """``model._forward(x, data_samples)`` as a plain module (what jit tracing needs)."""

    def __init__(self, model, data_samples):
        super().__init__()
        self.model = model
        self.data_samples = data_samples

    def forward(self, x):
        return self.model._forward(x, self.data_samples)


def build_measured(cfg, shape):
    """``(module, input, description)`` for the model of ``cfg`` at image size ``shape``."""
    from mmengine.registry import init_default_scope
    scope = cfg.get('default_scope', 'mmdet')
    init_default_scope(scope)
    registry = __import__(f'{scope}.registry', fromlist=['MODELS']).MODELS
    drop_pretrained(cfg.model)
    model = registry.build(cfg.model)
    h, w = shape
    divisor = (cfg.model.get('data_preprocessor') or {}).get('pad_size_divisor', 1)
    h, w = math.ceil(h / divisor) * divisor, math.ceil(w / divisor) * divisor
    x = torch.randn(1, 3, h, w)
    if hasattr(model, '_forward') and hasattr(model, 'backbone'):
        # the metainfo a two-stage detector's RPN needs in ``_forward``; segmentors and one-stage heads need none
        samples = [fake_data_sample(scope, h, w, with_gt=False)] if scope == 'mmdet' else None
        return TensorForward(model, samples), x, 'model._forward'
    return model, x, 'backbone'


def main():
    args = parse_args()
    import mmsparse  # noqa: F401  (registers everything)
    from mmsparse.models.plugins import SparseAttnBlock
    from mmsparse.utils import flop_count
    cfg = Config.fromfile(args.config)
    if args.cfg_options:
        cfg.merge_from_dict(args.cfg_options)
    module, x, what = build_measured(cfg, args.shape)
    res = flop_count(module, x)
    prefix = 'model.' if isinstance(module, TensorForward) else ''
    by_module = {k[len(prefix):] if k.startswith(prefix) else k: v for k, v in res['by_module'].items()}
    inner = module.model if isinstance(module, TensorForward) else module

    print(f'config: {args.config}')
    print(f'measured: {what}, input shape: {tuple(x.shape)}')
    print(f'Params: {res["params"] / 1e6:.3f} M    FLOPs: {res["flops"] / 1e9:.3f} G (multiply-adds)')
    print('by top-level module:')
    for name, child in inner.named_children():
        params = sum(p.numel() for p in child.parameters())
        if by_module.get(name) or params:
            print(f'  {name:<20} params {params / 1e6:9.3f} M   FLOPs {by_module.get(name, 0) / 1e9:9.3f} G')
    blocks = [(n, m) for n, m in inner.named_modules() if isinstance(m, SparseAttnBlock)]
    if blocks:
        params = sum(p.numel() for _, m in blocks for p in m.parameters())
        flops = sum(by_module.get(n, 0) for n, _ in blocks)
        print(f'  {len(blocks)} x SparseAttnBlock: params {params / 1e6:.3f} M   FLOPs {flops / 1e9:.3f} G')


if __name__ == '__main__':
    main()
