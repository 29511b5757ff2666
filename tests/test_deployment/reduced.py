"""Reduced models of real configs for the deployment tests: tiny widths and depths, BN instead of SyncBN."""
import os.path as osp

from mmsparse.families import list_families

REPO = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))

#: family -> the backbone of its reduced models. Not the spec's ``tiny`` config: these graphs are compared at a
#: size no grid divides, so BiFormer pads itself (``auto_pad``) and has the output LayerNorms its detectors have.
#: :func:`check_families` (run by the export tests) keeps the keys equal to the registered families: a new
#: family fails those tests until it has its entry, instead of going unexported.
BACKBONES = {
    'biformer': dict(type='mmsparse.BiFormer', arch=dict(embed_dims=[16, 32, 64, 64], depths=[1, 1, 1, 1], head_dim=16),
                     n_win=2, topks=(1, 2, 2, -2), auto_pad=True, out_norm_cfg=dict(type='LN2d', eps=1e-6)),
    'cloformer': dict(type='mmsparse.CloFormer', arch=dict(
        embed_dims=[16, 32, 32, 32], depths=[1, 1, 1, 1], num_heads=[2, 2, 2, 2], group_splits=[[1, 1]] * 4,
        kernel_sizes=[[3]] * 4, window_sizes=[4, 2, 1, 1], mlp_kernel_sizes=[3] * 4, mlp_ratios=[2] * 4)),
    'stvit': dict(type='mmsparse.STViT', arch=dict(embed_dims=[16, 32, 32, 32], depths=[1, 1, 1, 1],
                                                   num_heads=[1, 2, 2, 2])),
}
#: family -> the output channels of its reduced backbone
WIDTHS = {family: list(backbone['arch']['embed_dims']) for family, backbone in BACKBONES.items()}
BN = dict(type='BN', requires_grad=True)


def check_families():
    """Raise unless the tables cover exactly the registered families (``list_families()``)."""
    assert set(BACKBONES) == set(WIDTHS) == set(list_families()), (sorted(BACKBONES), list_families())


def reduced_options(config, family):
    """``cfg_options`` turning ``config`` (a path under configs/) into a few-second model of ``family``."""
    if family not in BACKBONES:
        raise KeyError(f'family {family!r} has no reduced backbone in tests/test_deployment/reduced.py; '
                       f'it has {sorted(BACKBONES)}')
    backbone = dict(_delete_=True, **BACKBONES[family])
    widths = WIDTHS[family]
    opts = {'model.backbone': backbone}
    name = osp.basename(config)
    if name.startswith('upernet'):
        opts['model.decode_head'] = dict(in_channels=widths, channels=16, norm_cfg=BN, num_classes=5)
        opts['model.auxiliary_head'] = dict(in_channels=widths[2], channels=16, norm_cfg=BN, num_classes=5)
    elif name.startswith('semfpn'):
        opts['model.neck'] = dict(in_channels=widths, out_channels=16)
        opts['model.decode_head'] = dict(in_channels=[16] * 4, channels=16, norm_cfg=BN, num_classes=5)
    elif name.startswith('retinanet'):
        opts['model.neck'] = dict(in_channels=widths, out_channels=16)
        opts['model.bbox_head'] = dict(num_classes=4, in_channels=16, feat_channels=16, stacked_convs=1)
        # every candidate kept: random heads score near the prior, the comparison needs detections
        opts['model.test_cfg'] = dict(score_thr=0.0, nms_pre=100, max_per_img=20)
    elif name.startswith('maskrcnn'):
        opts['model.neck'] = dict(in_channels=widths, out_channels=16)
        opts['model.rpn_head'] = dict(in_channels=16, feat_channels=16)
        opts['model.roi_head'] = dict(
            bbox_roi_extractor=dict(out_channels=16), bbox_head=dict(in_channels=16, fc_out_channels=32, num_classes=4),
            mask_roi_extractor=dict(out_channels=16), mask_head=dict(in_channels=16, conv_out_channels=16,
                                                                     num_convs=1, num_classes=4))
        opts['model.test_cfg'] = dict(rpn=dict(nms_pre=100, max_per_img=50),
                                      rcnn=dict(score_thr=0.0, max_per_img=20))
    return opts


def config_path(name):
    return osp.join(REPO, 'configs', name.split('_')[1], name)
