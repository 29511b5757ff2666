"""A residual block around one of mmsparse's three attention operators, usable as an mmdet/mmseg ResNet plugin.

``SparseAttnBlock`` wraps :class:`~mmsparse.ops.BiLevelRoutingAttention`, :class:`~mmsparse.ops.AttnConv` or
:class:`~mmsparse.ops.SuperTokenAttention` in a pre-norm residual block whose residual branches are scaled by
zero-initialised per-channel layer scales, so an inserted block is the identity until it is trained: a
pretrained ResNet/FPN keeps its accuracy at step 0.

Plugin mechanism. mmdet's and mmseg's ``ResNet(plugins=[dict(cfg=..., stages=..., position=...)])`` builds
every plugin with mmcv's ``build_plugin_layer(cfg, in_channels=C, postfix=...)``, which looks the type up in the
registry of the current default scope and its parents. The class is therefore registered in mmsparse's
registry (hence also in mmdet's and mmseg's, see :mod:`mmsparse.registry`) *and* in mmengine's root registry,
so it is found under any scope, including none.

Checkpoints of the first mmsparse layout (bare ``gamma1`` / ``gamma2`` parameters) load into the current one
(:class:`~mmsparse.models.layers.LayerScale2d` modules, ``gamma1.gamma``).
"""
import copy

import torch.nn as nn
from mmcv.cnn import build_activation_layer, build_norm_layer
from mmcv.cnn.bricks import DropPath
from mmengine.model import BaseModule

from mmsparse.families import LiveMapping, plugin_operators
from mmsparse.models.layers import LayerScale2d
from mmsparse.ops.checks import check_nchw, check_number, check_positive_int, check_rate
from mmsparse.registry import MODELS, register_in_root

__all__ = ['SparseAttnBlock', 'DWConvFFN', 'ATTN_TYPES', 'build_sparse_attention']


def _attn_types():
    return {name: (op.cls, op.plugin_defaults) for name, op in plugin_operators().items()}


#: accepted ``attn_cfg['type']`` -> (operator class, defaults filled when absent): a live view of the operators of
#: every registered family (:mod:`mmsparse.families`) that have plug-in defaults; every operator takes its
#: channel count as ``embed_dims``, which the block fills in
ATTN_TYPES = LiveMapping(_attn_types, "attn_cfg type -> (operator class, default kwargs)")


def build_sparse_attention(attn_cfg, channels):
    """Build the operator described by ``attn_cfg`` with its channel argument set to ``channels``.

    Args:
        attn_cfg (dict): ``type`` is one of :data:`ATTN_TYPES`, a registered family's operator class name (an
            ``mmsparse.`` scope prefix is accepted); the other keys are the operator's constructor arguments.
            Missing ones take the defaults of :data:`ATTN_TYPES`. ``embed_dims``, if given, must equal ``channels``.
        channels (int): channels of the map the operator runs on.

    Returns:
        nn.Module: the operator, NCHW in and out.
    """
    types = _attn_types()
    if not isinstance(attn_cfg, dict) or 'type' not in attn_cfg:
        raise TypeError(f'attn_cfg must be a dict with a "type" key, one of {sorted(types)}; got {attn_cfg!r}')
    cfg = copy.deepcopy(dict(attn_cfg))
    cfg.pop('_scope_', None)  # mmdet::/mmseg:: bases tag inherited dicts with their scope
    name = cfg.pop('type')
    if isinstance(name, str) and name.startswith('mmsparse.'):
        name = name[len('mmsparse.'):]
    if name not in types:
        raise ValueError(f'attn_cfg type={name!r} is not supported; accepted types are {sorted(types)}')
    cls, defaults = types[name]
    given = cfg.pop('embed_dims', channels)
    if given != channels:
        raise ValueError(f'attn_cfg embed_dims={given} does not match the block channels {channels}; '
                         f'leave it out, the block fills it in')
    for key, value in defaults.items():
        cfg.setdefault(key, copy.deepcopy(value))
    return cls(embed_dims=channels, **cfg)


class DWConvFFN(nn.Module):
    """Convolutional feed-forward: 1x1 expand, 3x3 depthwise, activation, 1x1 project.

    The depthwise conv gives the FFN the positional/local mixing that transformer FFNs on NCHW maps use in
    BiFormer/STViT-style blocks (and that a plain MLP would lack in a conv network).

    Args:
        channels (int): input and output channels C.
        hidden_channels (int): channels of the hidden layer.
        act_cfg (dict): activation. Default: ``dict(type='GELU')``.

    Shapes:
        (N, C, H, W) -> (N, C, H, W).
    """

    def __init__(self, channels, hidden_channels, act_cfg=dict(type='GELU')):
        super().__init__()
        self.fc1 = nn.Conv2d(channels, hidden_channels, 1)
        self.dwconv = nn.Conv2d(hidden_channels, hidden_channels, 3, padding=1, groups=hidden_channels)
        self.act = build_activation_layer(act_cfg)
        self.fc2 = nn.Conv2d(hidden_channels, channels, 1)

    def forward(self, x):
        return self.fc2(self.act(self.dwconv(self.fc1(x))))


@register_in_root('SparseAttnBlock')
@MODELS.register_module()
class SparseAttnBlock(BaseModule):
    """Pre-norm residual sparse-attention block, identity at initialisation (mmcv plugin, mmdet/mmseg layer).

    ::

        x = x + drop_path(gamma1 * proj_out(attn(proj_in(norm1(x)))))
        x = x + drop_path(gamma2 * ffn(norm2(x)))            # only when ffn_ratio > 0

    ``proj_in`` / ``proj_out`` are 1x1 convs present only when ``embed_dims`` differs from ``in_channels``
    (they cut the cost on wide maps such as ResNet's 1024/2048-channel stages). ``gamma1`` / ``gamma2`` are
    per-channel layer scales initialised to ``layer_scale_init_value`` (0 by default, so the block starts as
    the identity); :meth:`init_weights` re-applies that value after the enclosing model's initialisers, which
    re-initialise every ``Conv2d`` but must not switch the residual branches on.

    Use as a ResNet plugin (mmdet / mmseg)::

        backbone=dict(plugins=[dict(
            cfg=dict(type='SparseAttnBlock', attn_cfg=dict(type='BiLevelRoutingAttention', n_win=8, topk=4)),
            stages=(False, False, True, True), position='after_conv2')])

    Args:
        in_channels (int): channels C of the input and output (the plugin builder passes it).
        attn_cfg (dict): the operator: ``type`` is ``'BiLevelRoutingAttention'``, ``'AttnConv'``,
            ``'SuperTokenAttention'`` or the operator of a family registered later; other keys are its arguments
            (see :func:`build_sparse_attention`; the channel argument is filled in with ``embed_dims``).
        embed_dims (int, optional): channels the operator runs at. Default: ``in_channels``.
        ffn_ratio (float): hidden/C ratio of the conv-FFN; 0 disables the FFN. Default: 0.
        norm_cfg (dict): pre-norm layer. Default: ``dict(type='LN2d', eps=1e-6)`` (channel LayerNorm, which a
            detector's ``norm_eval`` leaves alone, unlike a BN whose statistics would stay frozen at init).
        act_cfg (dict): FFN activation. Default: ``dict(type='GELU')``.
        layer_scale_init_value (float): initial value of ``gamma1`` / ``gamma2``. Default: 0 (identity).
        drop_path_rate (float): stochastic-depth rate of both branches. Default: 0.
        init_cfg (dict | list[dict], optional): mmengine initialisation config. Default: None.

    Shapes:
        (N, C, H, W) -> (N, C, H, W), any H, W >= 1.
    """

    _abbr_ = 'sparse_attn'
    #: version 2: layer scales are LayerScale2d modules (``gamma1.gamma``)
    _version = 2

    def __init__(self, in_channels, attn_cfg, embed_dims=None, ffn_ratio=0., norm_cfg=dict(type='LN2d', eps=1e-6),
                 act_cfg=dict(type='GELU'), layer_scale_init_value=0., drop_path_rate=0., init_cfg=None):
        super().__init__(init_cfg=init_cfg)
        check_positive_int(in_channels, 'in_channels')
        embed_dims = in_channels if embed_dims is None else embed_dims
        check_positive_int(embed_dims, 'embed_dims')
        check_number(ffn_ratio, 'ffn_ratio', minimum=0)  # 0 disables the FFN
        check_number(layer_scale_init_value, 'layer_scale_init_value')
        drop_path_rate = check_rate(drop_path_rate, 'drop_path_rate')
        self.in_channels = in_channels
        self.embed_dims = embed_dims
        self.layer_scale_init_value = float(layer_scale_init_value)

        self.norm1 = build_norm_layer(norm_cfg, in_channels)[1]
        reduce = embed_dims != in_channels
        self.proj_in = nn.Conv2d(in_channels, embed_dims, 1) if reduce else nn.Identity()
        self.attn = build_sparse_attention(attn_cfg, embed_dims)
        self.proj_out = nn.Conv2d(embed_dims, in_channels, 1) if reduce else nn.Identity()
        self.gamma1 = LayerScale2d(in_channels, self.layer_scale_init_value)

        hidden = int(round(in_channels * ffn_ratio))
        if ffn_ratio > 0 and hidden < 1:
            raise ValueError(f'ffn_ratio={ffn_ratio} gives no hidden channel for in_channels={in_channels}')
        if hidden:
            self.norm2 = build_norm_layer(norm_cfg, in_channels)[1]
            self.ffn = DWConvFFN(in_channels, hidden, act_cfg)
            self.gamma2 = LayerScale2d(in_channels, self.layer_scale_init_value)
        else:
            self.norm2 = self.ffn = self.gamma2 = None
        self.drop_path = DropPath(drop_path_rate) if drop_path_rate > 0 else nn.Identity()

    def init_weights(self):
        super().init_weights()
        # parents' initialisers (ResNet's Kaiming, FPN's Xavier) touch our convs; the layer scales decide
        # whether the block starts as the identity, so they get their value back last
        for gamma in (self.gamma1, self.gamma2):
            if gamma is not None:
                gamma.reset_parameters()

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, *args, **kwargs):
        if (local_metadata.get('version') or 1) < self._version:
            for name in ('gamma1', 'gamma2'):
                if prefix + name in state_dict:
                    state_dict[prefix + name + '.gamma'] = state_dict.pop(prefix + name)
        super()._load_from_state_dict(state_dict, prefix, local_metadata, *args, **kwargs)

    def forward(self, x):
        check_nchw(x, self.in_channels, type(self).__name__)
        x = x + self.drop_path(self.gamma1(self.proj_out(self.attn(self.proj_in(self.norm1(x))))))
        if self.ffn is not None:
            x = x + self.drop_path(self.gamma2(self.ffn(self.norm2(x))))
        return x
