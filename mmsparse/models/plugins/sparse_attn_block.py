"""A residual block around one of mmsparse's attention operators, usable as an mmdet / mmseg ResNet plugin."""
from __future__ import annotations

import copy
from typing import Any, cast

import torch
import torch.nn as nn
from mmcv.cnn import build_activation_layer, build_norm_layer
from mmcv.cnn.bricks import DropPath
from mmengine.model import BaseModule

from mmsparse.families import LiveMapping, plugin_operators
from mmsparse.models.layers import LayerScale2d
from mmsparse.ops.checks import check_nchw, check_number, check_positive_int, check_rate
from mmsparse.registry import MODELS, register_in_root

__all__ = ['SparseAttnBlock', 'DWConvFFN', 'ATTN_TYPES', 'build_sparse_attention']


def _attn_types() -> dict[str, tuple[type, dict]]:
    # plugin_operators() holds only operators whose plugin_defaults is a dict
    return {name: (op.cls, cast(dict, op.plugin_defaults)) for name, op in plugin_operators().items()}


#: accepted ``attn_cfg['type']`` -> (operator class, defaults filled when absent): a live view of the operators of
#: every registered family (:mod:`mmsparse.families`) that have plug-in defaults; every operator takes its
#: channel count as ``embed_dims``, which the block fills in
ATTN_TYPES = LiveMapping(_attn_types, "attn_cfg type -> (operator class, default kwargs)")


def build_sparse_attention(attn_cfg: dict, channels: int) -> nn.Module:
    """Build the operator of ``attn_cfg`` (NCHW in and out) running on ``channels`` channels.

    Args:
        attn_cfg: ``type`` is a key of :data:`ATTN_TYPES` (an ``mmsparse.`` prefix is accepted); the other keys
            are constructor arguments, the missing ones taken from :data:`ATTN_TYPES`. ``embed_dims``, if given,
            must equal ``channels``.

    Raises:
        TypeError: ``attn_cfg`` is not a dict with a ``type``.
        ValueError: an unknown type, or ``embed_dims`` other than ``channels``.
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

    Shapes:
        (N, C, H, W) -> (N, C, H, W), C = ``channels``.
    """
    # why depthwise: the local mixing BiFormer / STViT-style FFNs on NCHW maps have, which a plain MLP lacks

    def __init__(self, channels: int, hidden_channels: int, act_cfg: dict = dict(type='GELU')) -> None:
        super().__init__()
        self.fc1 = nn.Conv2d(channels, hidden_channels, 1)
        self.dwconv = nn.Conv2d(hidden_channels, hidden_channels, 3, padding=1, groups=hidden_channels)
        self.act = build_activation_layer(act_cfg)
        self.fc2 = nn.Conv2d(hidden_channels, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.dwconv(self.fc1(x))))


# why also the root registry: mmcv's build_plugin_layer (what ResNet(plugins=...) calls) looks the type up in the
# current default scope and its parents; mmsparse's registry reaches mmdet's and mmseg's, the root one any scope
@register_in_root('SparseAttnBlock')
@MODELS.register_module()
class SparseAttnBlock(BaseModule):
    """Pre-norm residual sparse-attention block, the identity at initialisation (ResNet plugin, neck layer).

    ::

        x = x + drop_path(gamma1 * proj_out(attn(proj_in(norm1(x)))))
        x = x + drop_path(gamma2 * ffn(norm2(x)))            # only when ffn_ratio > 0

    ``proj_in`` / ``proj_out`` (1x1 convs) exist only when ``embed_dims != in_channels``. ``gamma1`` / ``gamma2``
    are per-channel layer scales, re-set to ``layer_scale_init_value`` by :meth:`init_weights`. Checkpoints of
    the first layout (bare ``gamma1`` / ``gamma2`` parameters) still load.

    Use as a ResNet plugin (mmdet / mmseg)::

        backbone=dict(plugins=[dict(
            cfg=dict(type='SparseAttnBlock', attn_cfg=dict(type='BiLevelRoutingAttention', n_win=8, topk=4)),
            stages=(False, False, True, True), position='after_conv2')])

    Args:
        in_channels: channels C of the input and output (the plugin builder passes it).
        attn_cfg: the operator (:func:`build_sparse_attention`; ``embed_dims`` is filled in).
        embed_dims: channels the operator runs at. Default: ``in_channels``.
        ffn_ratio: hidden / C ratio of the conv-FFN; 0 disables the FFN.
        norm_cfg: pre-norm layer; the default channel LayerNorm is left alone by a detector's ``norm_eval``.
        act_cfg: FFN activation.
        layer_scale_init_value: initial ``gamma1`` / ``gamma2``; 0 makes the block the identity.
        drop_path_rate: stochastic-depth rate of both branches.

    Shapes:
        (N, C, H, W) -> (N, C, H, W), any H, W >= 1.
    """

    _abbr_ = 'sparse_attn'
    # the FFN branch (None when ffn_ratio is 0)
    norm2: nn.Module | None
    ffn: DWConvFFN | None
    gamma2: LayerScale2d | None
    #: version 2: layer scales are LayerScale2d modules (``gamma1.gamma``)
    _version = 2

    def __init__(self, in_channels: int, attn_cfg: dict, embed_dims: int | None = None, ffn_ratio: float = 0.,
                 norm_cfg: dict = dict(type='LN2d', eps=1e-6), act_cfg: dict = dict(type='GELU'),
                 layer_scale_init_value: float = 0., drop_path_rate: float = 0.,
                 init_cfg: dict | list[dict] | None = None) -> None:
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
        # 1x1 projections only when narrower: they cut the cost on ResNet's 1024 / 2048-channel stages
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

    def init_weights(self) -> None:
        super().init_weights()
        # parents' initialisers (ResNet's Kaiming, FPN's Xavier) touch our convs; the layer scales decide
        # whether the block starts as the identity, so they get their value back last
        for gamma in (self.gamma1, self.gamma2):
            if gamma is not None:
                gamma.reset_parameters()

    def _load_from_state_dict(self, state_dict: dict, prefix: str, local_metadata: dict, *args: Any,
                              **kwargs: Any) -> None:
        if (local_metadata.get('version') or 1) < self._version:
            for name in ('gamma1', 'gamma2'):
                if prefix + name in state_dict:
                    state_dict[prefix + name + '.gamma'] = state_dict.pop(prefix + name)
        super()._load_from_state_dict(state_dict, prefix, local_metadata, *args, **kwargs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_nchw(x, self.in_channels, type(self).__name__)
        x = x + self.drop_path(self.gamma1(self.proj_out(self.attn(self.proj_in(self.norm1(x))))))
        if self.ffn is not None:
            # norm2 and gamma2 are set with ffn
            x = x + self.drop_path(self.gamma2(self.ffn(self.norm2(x))))  # type: ignore[misc]
        return x
