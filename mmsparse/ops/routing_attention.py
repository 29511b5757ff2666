"""BiFormer's attention operators, NCHW in and NCHW out.

- :class:`BiLevelRoutingAttention` (BRA, stages 1-3): region-to-region top-k routing on region-mean queries
  and keys, then token attention over the gathered top-k regions, plus a depthwise LePE on V.
- :class:`GlobalAttentionLePE` (stage 4): plain multi-head self-attention with a depthwise LePE on the input.

Both reproduce the authors' released implementation (``ops/bra_legacy.py`` and ``models/_common.py`` of
rayleizhu/BiFormer), including its quirks (see the class docstrings).

BRA's token attention is a function of :data:`BRA_IMPLS` (``'reference'``, ``'fast'``, ``'flex'``) with one
contract ``fn(q, k, v, topk, num_heads, scale) -> (out, topk_idx)``:

Shapes:
    q, k (N, P, T, C_qk); v (N, P, T, C_v) (``P`` regions row-major, ``T`` tokens per region, row-major);
    out (N, P, T, C_v) (heads head-major); topk_idx (N, P, topk) int64.
"""
from __future__ import annotations

import importlib
from contextlib import contextmanager
from typing import Any, Callable, Iterator

import torch
import torch.nn as nn
import torch.nn.functional as F
from einops import rearrange
from torch.utils.checkpoint import checkpoint

from mmsparse.registry import MODELS
from mmsparse.utils.compat import autocast_enabled, flex_attention_available, require_flex_attention

from ._amp import amp_backward, amp_forward
from .checks import DEFAULT_IMPL, IMPLS, check_bool, check_nchw, check_positive_int, check_scale
from .impl import ImplOperator
from ._export import exporting, pad_needed

try:  # the symbolic-shape options of torch.export
    _shape_config: Any = importlib.import_module('torch.fx.experimental._config')
except ImportError:  # pragma: no cover
    _shape_config = None

__all__ = ['BiLevelRoutingAttention', 'GlobalAttentionLePE', 'BRA_IMPLS', 'bra_reference', 'bra_fast', 'bra_flex',
           'check_bra_impl', 'flex_available']


def _route(q: torch.Tensor, k: torch.Tensor, topk: int, scale: float) -> torch.Tensor:
    """Top-k region routing on region means: (N, P, T, C) x2 -> (N, P, topk) int64 region indices.

    Means include padded tokens, and the inputs are detached: the official routing is not differentiable.
    Under autocast the means and logits are computed in float32 (a no-op for float32 inputs): half-precision
    logits can flip top-k choices (the authors warn of NaN losses with AMP).
    """
    with torch.autocast(device_type=q.device.type, enabled=False):
        q_r = q.detach().float().mean(dim=2)
        k_r = k.detach().float().mean(dim=2)
        # scale before the matmul, as the authors do, so the logits round identically (scale > 0 cannot
        # change the ranking, only the float32 rounding of near-ties)
        logits = (q_r * scale) @ k_r.transpose(-2, -1)
    return torch.topk(logits, k=topk, dim=-1).indices


def _gather_regions(t: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """Tokens of the selected regions: t (N, P, T, C), idx (N, Q, K) -> (N, Q, K*T, C).

    ``Q`` is ``P`` in the forward; :meth:`BiLevelRoutingAttention.explain` gathers for one query region only.
    """
    n, p, k = idx.shape
    tok, c = t.shape[2:]
    src = t.reshape(n, t.shape[1], tok * c)
    index = idx.reshape(n, p * k, 1).expand(-1, -1, tok * c)
    return torch.gather(src, 1, index).reshape(n, p, k * tok, c)


def _routed_weights(q: torch.Tensor, k_sel: torch.Tensor, num_heads: int, scale: float) -> torch.Tensor:
    """Token attention weights over the gathered regions, ``softmax(scale * q k^T)`` per head.

    Shapes:
        - q: (N, P, T, C_qk); k_sel: (N, P, S, C_qk) (``S = topk * T``, :func:`_gather_regions`).
        - output: (N*P, heads, T, S).
    """
    # heads are split head-major: head h owns channels h*d .. h*d+d-1
    q_h = rearrange(q, 'n p t (m d) -> (n p) m t d', m=num_heads)
    k_h = rearrange(k_sel, 'n p s (m d) -> (n p) m d s', m=num_heads)
    return ((q_h * scale) @ k_h).softmax(dim=-1)


def bra_reference(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, topk: int, num_heads: int,
                  scale: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Reference BRA token attention: gather the top-k regions' K/V tokens (``topk`` copies), then attend.

    Shapes: see the module docstring.
    """
    idx = _route(q, k, topk, scale)
    attn = _routed_weights(q, _gather_regions(k, idx), num_heads, scale)
    v_h = rearrange(_gather_regions(v, idx), 'n p s (m d) -> (n p) m s d', m=num_heads)
    out = rearrange(attn @ v_h, '(n p) m t d -> n p t (m d)', n=q.shape[0])
    return out, idx


def _routed_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, flat: torch.Tensor, topk: int, num_heads: int,
                      scale: float) -> torch.Tensor:
    """Gather the routed K/V regions (``flat``: row indices into the N*P region axis) and attend; (N*P, T, C_v)."""
    n, p, t, c_qk = q.shape
    c_v = v.shape[-1]
    d_qk, d_v = c_qk // num_heads, c_v // num_heads
    if exporting():
        # in a graph every strided view is a copy: gather from head-major K/V, (m, N*P, T, d), so that the
        # topk-fold gathered copies are already laid out for the matmuls (only the un-gathered maps transpose)
        k_m = k.reshape(n * p, t, num_heads, d_qk).permute(2, 0, 1, 3)
        v_m = v.reshape(n * p, t, num_heads, d_v).permute(2, 0, 1, 3)
        k_h = k_m.index_select(1, flat).reshape(num_heads, n * p, topk * t, d_qk)
        v_h = v_m.index_select(1, flat).reshape(num_heads, n * p, topk * t, d_v)
        q_h = q.reshape(n * p, t, num_heads, d_qk).permute(2, 0, 1, 3)
        out = F.scaled_dot_product_attention(q_h, k_h, v_h, scale=scale)  # (m, N*P, T, d_v)
        return out.permute(1, 2, 0, 3).reshape(n, p, t, c_v)
    # (N*P*topk, T, m, d) gathered rows viewed as (N*P, topk*T, m, d): contiguous, then heads as a strided view
    k_sel = k.reshape(n * p, t, num_heads, d_qk).index_select(0, flat)
    v_sel = v.reshape(n * p, t, num_heads, d_v).index_select(0, flat)
    k_h = k_sel.view(n * p, topk * t, num_heads, d_qk).transpose(1, 2)
    v_h = v_sel.view(n * p, topk * t, num_heads, d_v).transpose(1, 2)
    q_h = q.reshape(n * p, t, num_heads, d_qk).transpose(1, 2)
    out = F.scaled_dot_product_attention(q_h, k_h, v_h, scale=scale)  # (N*P, m, T, d_v)
    return out.transpose(1, 2).reshape(n, p, t, c_v)


#: from this top-k on, :func:`bra_fast` recomputes the K/V gather and the attention in the backward instead of
#: keeping the routed copies (2*topk K/V-sized tensors per layer) alive between forward and backward
BRA_RECOMPUTE_TOPK = 4


def bra_fast(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, topk: int, num_heads: int,
             scale: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Fast BRA token attention (``index_select`` gather + SDPA), same contract as :func:`bra_reference`.

    For ``topk >= BRA_RECOMPUTE_TOPK`` under autograd the gather and attention are recomputed in the backward.
    """
    # why recompute: BiFormer's stage 3 (topk=16) would otherwise keep 32 K/V-sized copies per block alive
    n, p = q.shape[:2]
    idx = _route(q, k, topk, scale)
    # region r of sample b lives at row b*P + r of the flattened region axis
    flat = (idx + torch.arange(n, device=idx.device).view(n, 1, 1) * p).reshape(-1)
    if topk >= BRA_RECOMPUTE_TOPK and torch.is_grad_enabled() and (q.requires_grad or k.requires_grad
                                                                   or v.requires_grad):
        out = checkpoint(_routed_attention, q, k, v, flat, topk, num_heads, scale, use_reentrant=False)
    else:
        out = _routed_attention(q, k, v, flat, topk, num_heads, scale)
    return out, idx


def _flex_block(t: int) -> int:
    """Block size that holds one region of ``t`` tokens: a power of two >= 16 up to 128, then multiples of 128.

    One region is one FlexAttention block (queries and keys alike), so the routing indices are the block
    indices. Powers of two keep the Triton tile sizes dividing the block on CUDA.
    """
    if t > 128:
        return -(-t // 128) * 128
    return max(16, 1 << (t - 1).bit_length())


_FLEX: dict[str, Any] = {}


def _flex_attention_fn(device_type: str) -> Callable[..., Any]:
    """``flex_attention``: compiled on CUDA (the fused kernel), eager elsewhere (CPU: forward only, unfused)."""
    if device_type not in _FLEX:
        from torch.nn.attention.flex_attention import flex_attention
        _FLEX[device_type] = torch.compile(flex_attention, dynamic=False) if device_type == 'cuda' else flex_attention
    return _FLEX[device_type]


def flex_available() -> tuple[bool, str]:
    """``(True, '')`` if :func:`bra_flex` can run its forward here, else ``(False, reason)``."""
    return flex_attention_available()


def _flex_kernel_options(block: int) -> dict[str, int] | None:
    """CUDA tile sizes that divide a region block smaller than the kernels' default tiles (None: defaults)."""
    if block >= 128:
        return None
    tile = min(block, 64)
    return dict(BLOCK_M=tile, BLOCK_N=tile, BLOCK_M1=min(tile, 32), BLOCK_N1=tile, BLOCK_M2=tile,
                BLOCK_N2=min(tile, 32))


def bra_flex(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, topk: int, num_heads: int,
             scale: float) -> tuple[torch.Tensor, torch.Tensor]:
    """BRA token attention as block-sparse FlexAttention (no K/V gather), same contract as :func:`bra_reference`.

    On CPU under autograd (FlexAttention has no CPU backward) :func:`bra_fast` runs instead; on CUDA the kernel
    is ``torch.compile(flex_attention)``. Raises if FlexAttention is unavailable.
    """
    # why: one region = one padded block of B tokens, so the routing indices are the BlockMask's kv_indices
    if q.device.type == 'cpu' and torch.is_grad_enabled() and (q.requires_grad or k.requires_grad
                                                               or v.requires_grad):
        return bra_fast(q, k, v, topk, num_heads, scale)
    require_flex_attention('bra_flex')
    from torch.nn.attention.flex_attention import BlockMask

    n, p, t, c_qk = q.shape
    c_v = v.shape[-1]
    idx = _route(q, k, topk, scale)
    block = _flex_block(t)

    def to_heads(x: torch.Tensor) -> torch.Tensor:  # (N, P, T, C) -> (N, m, P*B, d), padded tokens zero
        x = F.pad(x, (0, 0, 0, block - t)) if block != t else x
        return x.reshape(n, p * block, num_heads, x.shape[-1] // num_heads).transpose(1, 2)

    # routed[n, p, r]: query region p of sample n attends to key region r. The BlockMask's block lists are what
    # the fused kernel visits; the mask_mod states the same pattern per token (eager FlexAttention evaluates
    # only the mask_mod) and hides the padded key tokens of each block
    routed = torch.zeros(n, p, p, dtype=torch.bool, device=q.device).scatter_(2, idx, True)

    def routed_real_keys(b: torch.Tensor, h: torch.Tensor, q_idx: torch.Tensor, kv_idx: torch.Tensor) -> torch.Tensor:
        return routed[b, q_idx // block, kv_idx // block] & ((kv_idx % block) < t)

    # every query block lists all P key blocks, the routed ones first (only the first topk are visited)
    others = torch.arange(p, device=q.device).expand(n, p, p)[~routed].view(n, p, p - topk)
    kv_indices = torch.cat([idx, others], dim=2).to(torch.int32).unsqueeze(1)
    count = torch.full((n, 1, p), topk, dtype=torch.int32, device=q.device)
    if block == t:  # no padded tokens: the routed blocks are full, the kernel skips the mask_mod
        mask = BlockMask.from_kv_blocks(torch.zeros_like(count), kv_indices, count, kv_indices, BLOCK_SIZE=block,
                                        mask_mod=routed_real_keys, seq_lengths=(p * block, p * block))
    else:
        mask = BlockMask.from_kv_blocks(count, kv_indices, BLOCK_SIZE=block, mask_mod=routed_real_keys,
                                        seq_lengths=(p * block, p * block))
    options = _flex_kernel_options(block) if q.device.type == 'cuda' else None
    out = _flex_attention_fn(q.device.type)(to_heads(q), to_heads(k), to_heads(v), block_mask=mask, scale=scale,
                                            kernel_options=options)  # (N, m, P*B, d_v)
    out = out.transpose(1, 2).reshape(n, p, block, c_v)[:, :, :t]
    return out, idx


#: ``impl`` -> token-attention algorithm of :class:`BiLevelRoutingAttention` (contract in the module docstring);
#: ``'flex'`` is BRA's own addition to the shared ``'reference' | 'fast'`` vocabulary
BRA_IMPLS: dict[str, Callable[..., tuple[torch.Tensor, torch.Tensor]]] = {
    'reference': bra_reference, 'fast': bra_fast, 'flex': bra_flex}


def check_bra_impl(impl: Any, owner: str) -> str:
    """Return ``impl`` if it is a key of :data:`BRA_IMPLS`, else raise ``ValueError`` naming ``owner``.

    ``'flex'`` also raises where FlexAttention is unavailable.
    """
    if not isinstance(impl, str) or impl not in BRA_IMPLS:
        extra = [name for name in BRA_IMPLS if name not in IMPLS]
        raise ValueError(f'{owner}: impl={impl!r} is not known; choose one of {list(IMPLS)} '
                         f'(BRA also takes {", ".join(map(repr, extra))})')
    if impl == 'flex':
        require_flex_attention(owner)
    return impl


class _DepthwiseConvCL(torch.autograd.Function):
    """Depthwise ``k x k`` convolution (stride 1, same padding) on a channels-last map, with a cheaper backward.

    oneDNN's depthwise backward on CPU is several times slower than its forward, the weight gradient above all.
    Here the input gradient is the forward convolution of the output gradient with the flipped kernel, and the
    weight gradient is ``k*k`` shifted multiply-reduce passes (layout-agnostic, no im2col buffer).
    """

    @staticmethod
    @amp_forward
    def forward(ctx: Any, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        ctx.save_for_backward(x, weight)
        ctx.has_bias = bias is not None
        return F.conv2d(x, weight, bias, padding=weight.shape[-1] // 2, groups=x.shape[1])

    @staticmethod
    @amp_backward
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor | None, torch.Tensor | None]:
        x, weight = ctx.saved_tensors
        k = weight.shape[-1]
        c, (h, w) = x.shape[1], x.shape[-2:]
        grad = grad.contiguous(memory_format=torch.channels_last)
        grad_x = grad_w = grad_b = None
        if ctx.needs_input_grad[0]:
            grad_x = F.conv2d(grad, weight.flip(-1, -2), padding=k // 2, groups=c)
        if ctx.needs_input_grad[1]:
            xp = F.pad(x, (k // 2,) * 4)
            grad_w = torch.stack([(xp[:, :, i:i + h, j:j + w] * grad).sum((0, 2, 3))
                                  for i in range(k) for j in range(k)], dim=1).view_as(weight)
        if ctx.has_bias and ctx.needs_input_grad[2]:
            grad_b = grad.sum((0, 2, 3))
        return grad_x, grad_w, grad_b


def _lepe_fast(conv: nn.Conv2d, v_map: torch.Tensor) -> torch.Tensor:
    """``conv(v_map)`` through :class:`_DepthwiseConvCL` where it applies (CPU, float32, no autocast, square kernel).

    The hand-written backward works around oneDNN's slow depthwise backward; on CUDA cuDNN's own channels-last
    depthwise kernels are used.
    """
    if (torch.is_grad_enabled() and v_map.device.type == 'cpu' and v_map.dtype == torch.float32
            and not autocast_enabled('cpu') and conv.kernel_size[0] == conv.kernel_size[1]):
        return _DepthwiseConvCL.apply(v_map, conv.weight, conv.bias)
    return conv(v_map)


def _check_side_dwconv(side_dwconv: Any) -> None:
    if (isinstance(side_dwconv, bool) or not isinstance(side_dwconv, int) or side_dwconv < 0
            or (side_dwconv > 0 and side_dwconv % 2 == 0)):
        raise ValueError(f'side_dwconv must be 0 (no LePE) or an odd positive kernel size, got {side_dwconv!r}')


def _lepe_conv(channels: int, side_dwconv: int) -> nn.Conv2d | None:
    """The LePE depthwise conv (``None`` when ``side_dwconv == 0``)."""
    if side_dwconv == 0:
        return None
    return nn.Conv2d(channels, channels, side_dwconv, padding=side_dwconv // 2, groups=channels)


@contextmanager
def _regions_may_be_one_token() -> Iterator[None]:
    """While exporting: the tracer decides reshapes and layouts without assuming region sizes differ from 1."""
    # why: a region is ceil(size / n_win) tokens high, which is 1 at small sizes (n_win=8 at stride 16: inputs up to
    # 128); the tracer would guard every reshape on the example's region size (>= 2) and restrict the dynamic
    # range. Size-oblivious reasoning (what torch.onnx applies when it traces a module itself) takes the branch
    # that is valid for every size instead; eager runs are untouched
    if not exporting() or _shape_config is None or not hasattr(_shape_config, 'backed_size_oblivious'):
        yield
        return
    previous = _shape_config.backed_size_oblivious
    _shape_config.backed_size_oblivious = True
    try:
        yield
    finally:
        _shape_config.backed_size_oblivious = previous


def _forward_via_nhwc(op: Any, x: torch.Tensor, channels_last_output: bool) -> torch.Tensor:
    """An NCHW ``forward`` through ``op.forward_nhwc``; a contiguous result unless ``channels_last_output``.

    Shapes:
        - x: (N, C, H, W) with ``C == op.embed_dims``.
        - output: (N, C, H, W), channels-last strides when ``channels_last_output``.
    """
    check_nchw(x, op.embed_dims, type(op).__name__)
    out = op.forward_nhwc(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
    return out if channels_last_output else out.contiguous()


@MODELS.register_module()
class BiLevelRoutingAttention(ImplOperator, nn.Module):
    """Bi-Level Routing Attention (BRA), the authors' legacy version used by all released BiFormers.

    Region-to-region top-k routing on detached region means (padded tokens included), then token attention
    over the routed regions, plus a depthwise LePE on the padded V map. The scale is ``qk_dim ** -0.5`` (the
    *full* qk_dim, as in the official code). With ``auto_pad`` the input is zero-padded *before* the qkv
    projection (nothing masked) and the output cropped.

    Args:
        embed_dims: input/output channels C (also the V channels).
        num_heads: must divide ``embed_dims`` and ``qk_dim``.
        n_win: regions per side.
        topk: routed regions per query region, ``1 <= topk <= n_win**2``.
        qk_dim: channels of q and k. Default: ``embed_dims``.
        qk_scale: override of ``qk_dim ** -0.5``.
        side_dwconv: LePE kernel size (odd); 0 disables it.
        auto_pad: pad inputs whose H/W do not divide by ``n_win``; otherwise they raise ``ValueError``.
        impl: ``'fast'``, ``'reference'`` or ``'flex'`` (:func:`bra_flex`, BRA only); outputs agree to float
            rounding.

    Shapes:
        - input: (N, C, H, W), the normalised feature map.
        - output: (N, C, H, W), contiguous. :meth:`forward_nhwc`: (N, H, W, C) in and out.

    Attributes:
        record_routing (bool): when set to True, every forward stores the (N, n_win**2, topk) int64
            region indices in ``routing_idx`` (for tests and inspection). Off by default.
    """

    impls = tuple(BRA_IMPLS)

    @ImplOperator.impl.setter  # type: ignore[attr-defined]  # why: mypy cannot extend a base-class property
    def impl(self, value: str) -> None:
        # BRA's own message: the shared vocabulary first, then its extra 'flex'
        self._impl = check_bra_impl(value, type(self).__name__)

    def __init__(self, embed_dims: int, num_heads: int = 8, n_win: int = 7, topk: int = 4,
                 qk_dim: int | None = None, qk_scale: float | None = None, side_dwconv: int = 5,
                 auto_pad: bool = False, impl: str = DEFAULT_IMPL) -> None:
        super().__init__()
        qk_dim = embed_dims if qk_dim is None else qk_dim
        for value, name in ((embed_dims, 'embed_dims'), (num_heads, 'num_heads'), (n_win, 'n_win'),
                            (topk, 'topk'), (qk_dim, 'qk_dim')):
            check_positive_int(value, name)
        if embed_dims % num_heads or qk_dim % num_heads:
            raise ValueError(f'num_heads={num_heads} must divide embed_dims={embed_dims} and qk_dim={qk_dim}')
        if topk > n_win * n_win:
            raise ValueError(f'topk={topk} must be <= n_win**2 = {n_win * n_win} (the number of regions)')
        _check_side_dwconv(side_dwconv)
        self.impl = impl
        self.embed_dims = embed_dims
        self.qk_dim = qk_dim
        self.num_heads = num_heads
        self.n_win = n_win
        self.topk = topk
        self.scale = check_scale(qk_scale) or qk_dim ** -0.5
        self.auto_pad = check_bool(auto_pad, 'auto_pad')

        # one projection for q | k | v, in that channel order (the official layout)
        self.qkv = nn.Linear(embed_dims, 2 * qk_dim + embed_dims)
        self.lepe = _lepe_conv(embed_dims, side_dwconv)
        self.proj = nn.Linear(embed_dims, embed_dims)

        self.record_routing = False
        self.routing_idx: torch.Tensor | None = None

    def extra_repr(self) -> str:
        return (f'embed_dims={self.embed_dims}, qk_dim={self.qk_dim}, num_heads={self.num_heads}, '
                f'n_win={self.n_win}, '
                f'topk={self.topk}, scale={self.scale:.6g}, auto_pad={self.auto_pad}, impl={self.impl!r}')

    def forward(self, x: torch.Tensor, channels_last_output: bool = False) -> torch.Tensor:
        """(N, C, H, W) -> (N, C, H, W); ``channels_last_output=True`` skips the final contiguous copy."""
        return _forward_via_nhwc(self, x, channels_last_output)

    def region_layout(self, feat_hw: tuple[int, int]) -> tuple[int, int, int, int]:
        """Region geometry on an (h, w) map: ``(Hp, Wp, rh, rw)``, the padded map and the region size."""
        h_in, w_in = feat_hw
        # region size x regions - input size (not (n_win - h_in % n_win) % n_win): the same padding, in a form the
        # symbolic shapes of a dynamic-size export can simplify
        h, w = (h_in + self.n_win - 1) // self.n_win, (w_in + self.n_win - 1) // self.n_win
        return h * self.n_win, w * self.n_win, h, w

    def _project(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Steps 1-2: pad, split into regions, project; (N, H, W, C) -> q, k, v of shape (N, P, T, C_*)."""
        _, h_in, w_in, _ = x.shape
        hp, wp, _, _ = self.region_layout((h_in, w_in))
        pad_b, pad_r = hp - h_in, wp - w_in
        if pad_needed(pad_b, pad_r):
            if not self.auto_pad and (pad_b or pad_r):
                raise ValueError(f'{type(self).__name__}: input size {h_in}x{w_in} is not divisible by '
                                 f'n_win={self.n_win}; pass auto_pad=True or resize the input')
            x = F.pad(x, (0, 0, 0, pad_r, 0, pad_b))  # pad the normalised input, before the projection
        tokens = rearrange(x, 'n (j h) (i w) c -> n (j i) (h w) c', j=self.n_win, i=self.n_win)
        return self.qkv(tokens).split([self.qk_dim, self.qk_dim, self.embed_dims], dim=-1)

    def forward_nhwc(self, x: torch.Tensor) -> torch.Tensor:
        """:meth:`forward` on an (N, H, W, C) map, returning (N, H, W, C); same values."""
        with _regions_may_be_one_token():
            return self._forward_nhwc(x)

    def _forward_nhwc(self, x: torch.Tensor) -> torch.Tensor:
        _, h_in, w_in, _ = x.shape
        hp, wp, h, w = self.region_layout((h_in, w_in))
        pad_b, pad_r = hp - h_in, wp - w_in
        j = i = self.n_win
        q, k, v = self._project(x)

        out, idx = BRA_IMPLS[self.impl](q, k, v, self.topk, self.num_heads, self.scale)
        if self.record_routing:
            self.routing_idx = idx.detach()

        if self.lepe is not None:
            # LePE runs over the whole padded V map (zero padding only outside it)
            if self.impl == 'reference':
                v_map = rearrange(v, 'n (j i) (h w) c -> n c (j h) (i w)', j=j, i=i, h=h, w=w)
            else:
                # channels-last map: the depthwise conv is several times faster on it (oneDNN), same maths
                v_map = rearrange(v, 'n (j i) (h w) c -> n (j h) (i w) c', j=j, i=i, h=h, w=w).permute(0, 3, 1, 2)
            lepe = self.lepe(v_map) if self.impl == 'reference' else _lepe_fast(self.lepe, v_map)
            out = out + rearrange(lepe, 'n c (j h) (i w) -> n (j i) (h w) c', j=j, i=i)
        out = self.proj(out)
        out = rearrange(out, 'n (j i) (h w) c -> n (j h) (i w) c', j=j, i=i, h=h, w=w)
        if pad_needed(pad_b, pad_r):
            out = out[:, :h_in, :w_in]
        return out

    @torch.no_grad()
    def explain(self, x: torch.Tensor, query_yx: tuple[int, int], routing_idx: torch.Tensor | None = None
                ) -> dict[str, Any]:
        """Region, routed regions and token attention of one query token of sample 0 (``'reference'`` steps).

        Raises ``ValueError`` if ``query_yx`` is outside the (h, w) map.

        Args:
            routing_idx: (n_win**2, topk) indices recorded by a forward (``record_routing``); recomputed if None.

        Returns:
            ``region`` (int), ``routed`` (list[int], routed order), ``per_head`` (heads, topk*T) weights over
            the gathered tokens, ``weights`` (Hp, Wp) head mean on the padded map (0 outside the routed
            regions), ``layout`` ``(Hp, Wp, rh, rw)`` and ``caption``.
        """
        check_nchw(x, self.embed_dims, type(self).__name__)
        h, w = x.shape[-2:]
        fy, fx = query_yx
        if not (0 <= fy < h and 0 <= fx < w):
            raise ValueError(f'query {tuple(query_yx)} is outside the {h}x{w} feature map')
        n = self.n_win
        hp, wp, rh, rw = self.region_layout((h, w))
        q, k, _ = self._project(x[:1].permute(0, 2, 3, 1))
        if routing_idx is None:
            idx = _route(q, k, self.topk, self.scale)
        else:
            idx = routing_idx.to(device=q.device, dtype=torch.long).reshape(1, n * n, self.topk)
        region = (fy // rh) * n + fx // rw
        token = (fy % rh) * rw + fx % rw
        sel = idx[:, region:region + 1]  # (1, 1, topk): only the query's region is gathered
        attn = _routed_weights(q[:, region:region + 1], _gather_regions(k, sel), self.num_heads, self.scale)
        per_head = attn[0, :, token]  # (heads, topk*T)
        routed = sel[0, 0]
        placed = per_head.new_zeros(n * n, rh * rw)
        placed[routed] = per_head.mean(0).view(routed.numel(), rh * rw)
        weights = rearrange(placed, '(j i) (h w) -> (j h) (i w)', j=n, h=rh)
        return dict(region=int(region), routed=[int(r) for r in routed], per_head=per_head, weights=weights,
                    layout=(hp, wp, rh, rw), caption=f'token attention over the top-{self.topk} routed regions')


@MODELS.register_module()
class GlobalAttentionLePE(ImplOperator, nn.Module):
    """Global multi-head self-attention plus a depthwise LePE on the input (BiFormer's stage 4).

    ``out = proj(MHSA(x) + DW(x))`` over all H*W tokens. The qkv projection has no bias by default and its
    output channels are ``[q | k | v]``, each split head-major; the scale is ``head_dim ** -0.5``. The
    number of heads is fixed by the caller (the official stage 4 always uses 8, whatever ``head_dim``).

    Args:
        embed_dims: input/output channels C.
        num_heads: must divide ``embed_dims``.
        qk_scale: override of ``(embed_dims // num_heads) ** -0.5``.
        side_dwconv: LePE kernel size (odd); 0 disables it.
        impl: ``'fast'`` (SDPA) or ``'reference'`` (explicit softmax); same values up to float rounding.

    Shapes:
        - input: (N, C, H, W) (already normalised), any H, W.
        - output: (N, C, H, W), contiguous. :meth:`forward_nhwc`: (N, H, W, C) in and out.
    """

    def __init__(self, embed_dims: int, num_heads: int = 8, qkv_bias: bool = False, qk_scale: float | None = None,
                 side_dwconv: int = 5, impl: str = DEFAULT_IMPL) -> None:
        super().__init__()
        check_positive_int(embed_dims, 'embed_dims')
        check_positive_int(num_heads, 'num_heads')
        if embed_dims % num_heads:
            raise ValueError(f'num_heads={num_heads} must divide embed_dims={embed_dims}')
        _check_side_dwconv(side_dwconv)
        self.impl = impl
        self.embed_dims = embed_dims
        self.num_heads = num_heads
        self.scale = check_scale(qk_scale) or (embed_dims // num_heads) ** -0.5
        self.qkv = nn.Linear(embed_dims, 3 * embed_dims, bias=qkv_bias)
        self.lepe = _lepe_conv(embed_dims, side_dwconv)
        self.proj = nn.Linear(embed_dims, embed_dims)

    def extra_repr(self) -> str:
        return f'embed_dims={self.embed_dims}, num_heads={self.num_heads}, scale={self.scale:.6g}, impl={self.impl!r}'

    def forward(self, x: torch.Tensor, channels_last_output: bool = False) -> torch.Tensor:
        """Same contract as :meth:`BiLevelRoutingAttention.forward`."""
        return _forward_via_nhwc(self, x, channels_last_output)

    def forward_nhwc(self, x: torch.Tensor) -> torch.Tensor:
        """:meth:`forward` on an (N, H, W, C) map, returning (N, H, W, C)."""
        _, h, w, _ = x.shape
        tokens = rearrange(x, 'n h w c -> n (h w) c')
        q, k, v = rearrange(self.qkv(tokens), 'n t (three m d) -> three n m t d', three=3, m=self.num_heads)
        if self.impl == 'reference':
            out = ((q * self.scale) @ k.transpose(-2, -1)).softmax(dim=-1) @ v
        else:
            out = F.scaled_dot_product_attention(q, k, v, scale=self.scale)
        out = rearrange(out, 'n m t d -> n t (m d)')
        if self.lepe is not None:
            x_map = x.permute(0, 3, 1, 2)
            if self.impl == 'reference':
                x_map = x_map.contiguous()  # the authors' NCHW convolution
            out = out + rearrange(self.lepe(x_map), 'n c h w -> n (h w) c')
        return rearrange(self.proj(out), 'n (h w) c -> n h w c', h=h, w=w)
