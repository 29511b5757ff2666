"""CloFormer's AttnConv token mixer (the authors' ``EfficientAttention``), NCHW in and out.

Reference: Fan et al., "Rethinking Local Perception in Lightweight Vision Transformer" (arXiv 2303.17803),
official code qhfan/CloFormer ``9181f69``. Module and parameter names equal the authors', so their state dicts
load unchanged.

Heads are split into *local* groups (one per kernel size) and one *global* group::

    local:  q | k | v = DW_k(PW(x));  out = tanh(scale * PW2(SiLU(PW1(q * k)))) * v
    global: q = PW(x);  k | v = PW(AvgPool_ws(x));  out = softmax(scale * q k^T) v

Branch outputs are concatenated (local first, global last) and fused by a 1x1 ``proj``.

Any H, W >= 1 is accepted: the global pooling uses ``ceil_mode`` without counting padding, so a border key is
the mean of the real pixels of its partial window. At multiples of ``window_size`` this equals the authors'
code; elsewhere the authors' floor silently drops border rows, which we keep (deliberately different).

``impl='reference'`` runs the layers one by one in NCHW with an explicit softmax; ``'fast'`` (default) fuses
the 1x1 input projections into one convolution, runs channels-last and calls SDPA. Same parameters and maths.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Callable, cast

import torch
import torch.nn as nn
import torch.nn.functional as F
from einops import rearrange

from mmsparse.registry import MODELS

from .checks import DEFAULT_IMPL, check_nchw, check_each, check_odd_kernel, check_positive_int, check_rate
from .impl import ImplOperator

__all__ = ['AttnConv', 'GLOBAL_ATTENTION_IMPLS', 'global_attention_reference', 'global_attention_fast']


def global_attention_reference(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                               scale: float) -> torch.Tensor:
    """Multi-head softmax attention written out as in the authors' code (q scaled before the product).

    Shapes:
        q (B, heads, N, d); k, v (B, heads, M, d); output (B, heads, N, d).
    """
    attn = (scale * q) @ k.transpose(-1, -2)
    return attn.softmax(dim=-1) @ v


def global_attention_fast(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float) -> torch.Tensor:
    """Same contract as :func:`global_attention_reference`, through PyTorch's fused SDPA kernels."""
    return F.scaled_dot_product_attention(q, k, v, scale=scale)


#: ``impl`` -> function(q, k, v, scale) of the global branch
GLOBAL_ATTENTION_IMPLS: dict[str, Callable[..., torch.Tensor]] = {
    'reference': global_attention_reference, 'fast': global_attention_fast}


class AttnMap(nn.Module):
    """The local branch's context-aware weights: PW -> SiLU -> PW (keys ``act_block.{0,2}``)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.act_block = nn.Sequential(
            nn.Conv2d(channels, channels, 1), nn.SiLU(), nn.Conv2d(channels, channels, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act_block(x)


def _identity(t: torch.Tensor) -> torch.Tensor:
    return t


@MODELS.register_module()
class AttnConv(ImplOperator, nn.Module):
    """CloFormer's AttnConv mixer: local convolutional-attention groups plus a pooled global group.

    Args:
        embed_dims: channels C of the input and output.
        num_heads: heads; head dim ``d = embed_dims // num_heads``, scale ``d ** -0.5``.
        group_split: heads per group ``[local_1, ..., local_n, global]``, summing to ``num_heads``;
            a 0-head group is omitted.
        kernel_sizes: odd depthwise kernel of each local group, ``len(group_split) - 1`` entries.
        window_size: pooling window (and stride) of the global keys/values; 1 disables pooling.
            Default: 7 (CloFormer stages use 8, 4, 2, 1).
        attn_drop: dropout on the local gates and the global attention weights.
        proj_drop: dropout after ``proj``.
        qkv_bias: bias of the q/k/v projections.
        impl: ``'fast'`` or ``'reference'``; outputs agree to float rounding.

    Shapes:
        input (B, C, H, W) with any H, W >= 1; output (B, C, H, W).
    """

    def __init__(self, embed_dims: int, num_heads: int, group_split: Sequence[int],
                 kernel_sizes: Sequence[int], window_size: int = 7, attn_drop: float = 0.,
                 proj_drop: float = 0., qkv_bias: bool = True, impl: str = DEFAULT_IMPL) -> None:
        super().__init__()
        check_positive_int(embed_dims, 'embed_dims')
        check_positive_int(num_heads, 'num_heads')
        if embed_dims % num_heads:
            raise ValueError(f'embed_dims={embed_dims} must be divisible by num_heads={num_heads}')
        group_split, kernel_sizes = list(group_split), list(kernel_sizes)
        if any(isinstance(g, bool) or not isinstance(g, int) or g < 0 for g in group_split):
            raise ValueError(f'group_split must be non-negative ints, got {group_split!r}')
        if sum(group_split) != num_heads:
            raise ValueError(f'group_split={group_split} must sum to num_heads={num_heads}')
        if len(group_split) != len(kernel_sizes) + 1:
            raise ValueError(f'group_split needs one entry per kernel size plus one for the global group: '
                             f'len(group_split)={len(group_split)}, len(kernel_sizes)={len(kernel_sizes)}')
        check_each(kernel_sizes, check_odd_kernel, 'kernel_sizes')
        check_positive_int(window_size, 'window_size')
        self.impl = impl

        self.embed_dims = embed_dims
        self.num_heads = num_heads
        self.head_dim = embed_dims // num_heads
        self.scale = self.head_dim ** -0.5
        self.group_split = group_split
        self.kernel_sizes = kernel_sizes
        self.window_size = window_size

        # ModuleLists hold only the non-empty local groups, in order, as the authors' do (same keys)
        self.convs, self.act_blocks, self.qkvs = nn.ModuleList(), nn.ModuleList(), nn.ModuleList()
        for heads, ks in zip(group_split[:-1], kernel_sizes):
            if heads == 0:
                continue
            ch = heads * self.head_dim
            # one depthwise conv over q|k|v == three separate depthwise convs
            self.convs.append(nn.Conv2d(3 * ch, 3 * ch, ks, 1, ks // 2, groups=3 * ch))
            self.act_blocks.append(AttnMap(ch))
            self.qkvs.append(nn.Conv2d(embed_dims, 3 * ch, 1, bias=qkv_bias))
        self.global_heads = group_split[-1]
        if self.global_heads:
            ch = self.global_heads * self.head_dim
            self.global_q = nn.Conv2d(embed_dims, ch, 1, bias=qkv_bias)
            self.global_kv = nn.Conv2d(embed_dims, 2 * ch, 1, bias=qkv_bias)
        self.attn_drop = nn.Dropout(check_rate(attn_drop, 'attn_drop'))
        self.proj = nn.Conv2d(embed_dims, embed_dims, 1, bias=qkv_bias)
        self.proj_drop = nn.Dropout(check_rate(proj_drop, 'proj_drop'))

    def extra_repr(self) -> str:
        return (f'embed_dims={self.embed_dims}, num_heads={self.num_heads}, group_split={self.group_split}, '
                f'kernel_sizes={self.kernel_sizes}, window_size={self.window_size}, impl={self.impl!r}')

    def _gate(self, q: torch.Tensor, k: torch.Tensor, attn_map: nn.Module) -> torch.Tensor:
        """The local branch's context-aware weights ``tanh(scale * AttnMap(q * k))`` (before dropout)."""
        # the scale comes after the AttnMap convs and before tanh (authors' order)
        return torch.tanh(attn_map(q * k) * self.scale)

    def _local(self, x: torch.Tensor, to_qkv: Callable[[torch.Tensor], torch.Tensor], mixer: nn.Module,
               attn_map: nn.Module) -> torch.Tensor:
        q, k, v = mixer(to_qkv(x)).chunk(3, dim=1)
        return self.attn_drop(self._gate(q, k, attn_map)) * v

    def _pool(self, x: torch.Tensor) -> torch.Tensor:
        if self.window_size == 1:
            return x
        # ceil_mode + count_include_pad=False: a border key averages only the real pixels of its window;
        # equals the authors' AvgPool2d whenever H and W are multiples of the window
        return F.avg_pool2d(x, self.window_size, self.window_size, ceil_mode=True, count_include_pad=False)

    def _global_qkv(self, x: torch.Tensor, q_map: torch.Tensor | None = None) -> tuple:
        """The global group's heads ``q (B, m, HW, d)``, ``k, v (B, m, M, d)`` and the pooled grid ``(hk, wk)``."""
        q = rearrange(self.global_q(x) if q_map is None else q_map, 'b (m d) h w -> b m (h w) d', d=self.head_dim)
        kv = self.global_kv(self._pool(x))
        k, v = rearrange(kv, 'b (two m d) h w -> two b m (h w) d', two=2, d=self.head_dim)
        return q, k, v, kv.shape[-2:]

    def _global_weights(self, q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
        """Explicit global attention weights ``softmax(scale * q k^T)``: (B, m, N, M), before dropout."""
        return ((self.scale * q) @ k.transpose(-1, -2)).softmax(dim=-1)

    def _global(self, x: torch.Tensor, q_map: torch.Tensor | None = None) -> torch.Tensor:
        h, w = x.shape[-2:]
        q, k, v, _ = self._global_qkv(x, q_map)
        if self.training and self.attn_drop.p > 0:
            # dropout on the attention weights needs them explicitly
            out = self.attn_drop(self._global_weights(q, k)) @ v
        else:
            out = GLOBAL_ATTENTION_IMPLS[self.impl](q, k, v, self.scale)
        return rearrange(out, 'b m (h w) d -> b (m d) h w', h=h, w=w)

    def forward_branches(self, x: torch.Tensor) -> torch.Tensor:
        """Concatenated branch outputs fed to ``proj``: (B, C, H, W), local groups first, global last."""
        check_nchw(x, self.embed_dims, type(self).__name__)
        if self.impl == 'fast':
            return self._forward_branches_fast(x)
        res = [self._local(x, to_qkv, mixer, attn_map)
               for to_qkv, mixer, attn_map in zip(self.qkvs, self.convs, self.act_blocks)]
        if self.global_heads:
            res.append(self._global(x))
        return torch.cat(res, dim=1)

    def _forward_branches_fast(self, x: torch.Tensor) -> torch.Tensor:
        x = x.contiguous(memory_format=torch.channels_last)
        # every 1x1 projection of x at once: [q|k|v of local group 1, ..., global q]; one read of x, one GEMM
        convs = cast('list[nn.Conv2d]', list(self.qkvs) + ([self.global_q] if self.global_heads else []))
        weight = torch.cat([c.weight for c in convs])
        # all convs share qkv_bias, so checking the first one covers every bias being a Tensor
        bias = torch.cat([c.bias for c in convs]) if convs[0].bias is not None else None  # type: ignore[misc]
        proj = F.conv2d(x, weight, bias).split([c.out_channels for c in convs], dim=1)
        res = [self._local(p, _identity, mixer, attn_map)
               for p, mixer, attn_map in zip(proj, self.convs, self.act_blocks)]
        if self.global_heads:
            res.append(self._global(x, proj[-1]))
        return torch.cat(res, dim=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Mix tokens; (B, C, H, W) -> (B, C, H, W)."""
        out = self.proj_drop(self.proj(self.forward_branches(x)))
        # the fast path computes in channels-last memory; hand back a plain NCHW tensor like the reference
        return out.contiguous() if self.impl == 'fast' else out

    @torch.no_grad()
    def explain(self, x: torch.Tensor, query_yx: tuple[int, int]) -> dict[str, Any]:
        """Local context-aware weights and global attention of one query pixel of sample 0.

        Built from the reference forward's steps; ``'fast'`` equals them up to float rounding.
        Raises ``ValueError`` if ``query_yx`` is outside the (H, W) map.

        Returns:
            ``local``: per non-empty local group, ``kernel_size``, ``gate`` (L,), ``per_channel`` (L, k, k)
            ``= gate[c] * W[c, o]`` (W the depthwise kernel of v) and ``weights`` (k, k), their channel mean
            of absolute values; ``global``: ``None``, or ``per_head`` (heads, M), ``weights`` (hk, wk) and
            ``window_size``; ``weights``: the global map, else the first local window placed on the (H, W)
            map (0 outside); ``caption``.
        """
        # why gate * W: a local group computes out[c] = gate[c] * (sum_o W[c, o] v[c, p + o] + b[c]) at p
        check_nchw(x, self.embed_dims, type(self).__name__)
        x = x[:1]
        h, w = x.shape[-2:]
        fy, fx = query_yx
        if not (0 <= fy < h and 0 <= fx < w):
            raise ValueError(f'query {tuple(query_yx)} is outside the {h}x{w} feature map')
        local: list[dict[str, Any]] = []
        for to_qkv, mixer, attn_map in zip(self.qkvs, cast('list[nn.Conv2d]', self.convs), self.act_blocks):
            q, k, _ = mixer(to_qkv(x)).chunk(3, dim=1)
            gate = self._gate(q, k, attn_map)[0, :, fy, fx]
            per_channel = gate[:, None, None] * mixer.weight[2 * gate.numel():, 0]
            local.append(dict(kernel_size=mixer.kernel_size[0], gate=gate, per_channel=per_channel,
                              weights=per_channel.abs().mean(0)))
        out: dict[str, Any] = {'local': local, 'global': None}
        if self.global_heads:
            q, k, _, (hk, wk) = self._global_qkv(x)
            row = fy * w + fx
            per_head = self._global_weights(q[:, :, row:row + 1], k)[0, :, 0]
            out['global'] = dict(per_head=per_head, weights=per_head.mean(0).view(hk, wk),
                                 window_size=self.window_size)
            ws = self.window_size
            out.update(weights=out['global']['weights'], caption=f'global attention over {ws}x{ws}-pooled keys')
            return out
        # no global group: the first local window placed on the map
        k = local[0]['kernel_size']
        placed = x.new_zeros(h + k - 1, w + k - 1)
        placed[fy:fy + k, fx:fx + k] = local[0]['weights']
        out.update(weights=placed[k // 2:k // 2 + h, k // 2:k // 2 + w], caption=f'local {k}x{k} weights |gate * W|')
        return out
