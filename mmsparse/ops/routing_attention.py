"""BiFormer's attention operators, NCHW in and NCHW out.

- :class:`BiLevelRoutingAttention` (BRA, stages 1-3): region-to-region top-k routing on region-mean queries
  and keys, then token attention over the gathered top-k regions, plus a depthwise LePE on V.
- :class:`GlobalAttentionLePE` (stage 4): plain multi-head self-attention with a depthwise LePE on the input.

Both reproduce the authors' released implementation (``ops/bra_legacy.py`` and ``models/_common.py`` of
rayleizhu/BiFormer), including its quirks (see the class docstrings).

Both operators take ``impl='reference' | 'fast'``. For BRA the token-attention step is a function in
:data:`BRA_IMPLS` behind one contract: ``'reference'`` (:func:`bra_reference`, the authors' gather, verified
against their fixtures) and ``'fast'`` (the default, :func:`bra_fast`: same routing, K/V regions fetched with
``index_select`` and fused attention, plus a cheaper LePE backward).

``fn(q, k, v, topk, num_heads, scale) -> (out, topk_idx)`` with ``q, k: (N, P, T, C_qk)``,
``v: (N, P, T, C_v)`` (``P`` regions in row-major order, ``T`` tokens per region, row-major inside the
region), ``out: (N, P, T, C_v)`` (heads concatenated head-major) and ``topk_idx: (N, P, topk)`` int64.

:meth:`BiLevelRoutingAttention.explain` runs the forward's own steps (regions and projection, routing, gather,
attention weights) for one query token and returns what the visualization draws.
"""
from __future__ import annotations

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
from ._export import pad_needed

__all__ = ['BiLevelRoutingAttention', 'GlobalAttentionLePE', 'BRA_IMPLS', 'bra_reference', 'bra_fast', 'bra_flex',
           'check_bra_impl', 'flex_available']


def _route(q, k, topk, scale):
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


def bra_reference(q, k, v, topk, num_heads, scale):
    """Reference BRA token attention: gather the K/V tokens of the top-k regions, then dense attention.

    Materialises ``topk`` copies of K and V per query region, exactly like the authors' code (memory heavy
    at detection resolutions; see the module docstring for the contract).
    """
    idx = _route(q, k, topk, scale)
    attn = _routed_weights(q, _gather_regions(k, idx), num_heads, scale)
    v_h = rearrange(_gather_regions(v, idx), 'n p s (m d) -> (n p) m s d', m=num_heads)
    out = rearrange(attn @ v_h, '(n p) m t d -> n p t (m d)', n=q.shape[0])
    return out, idx


def _routed_attention(q, k, v, flat, topk, num_heads, scale):
    """Gather the routed K/V regions (``flat``: row indices into the N*P region axis) and attend; (N*P, T, C_v)."""
    n, p, t, c_qk = q.shape
    c_v = v.shape[-1]
    d_qk, d_v = c_qk // num_heads, c_v // num_heads
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


def bra_fast(q, k, v, topk, num_heads, scale):
    """Fast BRA token attention, same contract and routing as :func:`bra_reference`.

    The routed K/V regions are fetched with one ``index_select`` over the flattened ``(N*P)`` region axis, the
    head split is a strided view, and :func:`torch.nn.functional.scaled_dot_product_attention` computes the
    attention without materialising the ``(T x topk*T)`` logits of every region in fp32 (flash kernels on CPU
    and GPU). The backward of ``index_select`` is an ``index_add`` into a K/V-sized buffer, never a dense
    scatter over a regions x regions x tokens x C tensor. For ``topk >= BRA_RECOMPUTE_TOPK`` under autograd,
    the gather and the attention are recomputed in the backward (activation checkpointing of this step
    only), so a layer keeps q, k, v between forward and backward instead of ``topk`` copies of k and v:
    BiFormer's stage 3 (``topk=16``) would otherwise hold 32 K/V-sized copies per block.
    """
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


def _flex_block(t):
    """Block size that holds one region of ``t`` tokens: a power of two >= 16 up to 128, then multiples of 128.

    One region is one FlexAttention block (queries and keys alike), so the routing indices are the block
    indices. Powers of two keep the Triton tile sizes dividing the block on CUDA.
    """
    if t > 128:
        return -(-t // 128) * 128
    return max(16, 1 << (t - 1).bit_length())


_FLEX = {}


def _flex_attention_fn(device_type):
    """``flex_attention``: compiled on CUDA (the fused kernel), eager elsewhere (CPU: forward only, unfused)."""
    if device_type not in _FLEX:
        from torch.nn.attention.flex_attention import flex_attention
        _FLEX[device_type] = torch.compile(flex_attention, dynamic=False) if device_type == 'cuda' else flex_attention
    return _FLEX[device_type]


def flex_available():
    """``(True, '')`` if :func:`bra_flex` can run its forward here, else ``(False, reason)``."""
    return flex_attention_available()


def _flex_kernel_options(block):
    """CUDA tile sizes that divide a region block smaller than the kernels' default tiles (None: defaults)."""
    if block >= 128:
        return None
    tile = min(block, 64)
    return dict(BLOCK_M=tile, BLOCK_N=tile, BLOCK_M1=min(tile, 32), BLOCK_N1=tile, BLOCK_M2=tile,
                BLOCK_N2=min(tile, 32))


def bra_flex(q, k, v, topk, num_heads, scale):
    """BRA token attention as block-sparse FlexAttention, same contract and routing as :func:`bra_reference`.

    Tokens are already region-contiguous (region ``p`` holds rows ``p*T .. p*T+T-1``); each region is padded to
    one block of ``B`` tokens (:func:`_flex_block`), so the sequence is ``P*B`` long and block ``p`` is region
    ``p`` for queries and keys alike. The routing indices go straight into a ``BlockMask``: query block ``p``
    visits the ``topk`` key blocks ``idx[n, p]`` (``kv_num_blocks = topk``, ``kv_indices = idx``), and a
    ``mask_mod`` hides the padded key tokens of every block. No gathered K/V copy exists: the kernel reads
    K/V blocks in place (the only copies are the padded q, k, v). Padded query rows are computed and dropped.

    FlexAttention has no backward on CPU: there, under autograd, :func:`bra_fast` (same maths) runs instead.
    On CUDA the fused kernel is ``torch.compile(flex_attention)``.
    """
    if q.device.type == 'cpu' and torch.is_grad_enabled() and (q.requires_grad or k.requires_grad
                                                               or v.requires_grad):
        return bra_fast(q, k, v, topk, num_heads, scale)
    require_flex_attention('bra_flex')
    from torch.nn.attention.flex_attention import BlockMask

    n, p, t, c_qk = q.shape
    c_v = v.shape[-1]
    idx = _route(q, k, topk, scale)
    block = _flex_block(t)

    def to_heads(x):  # (N, P, T, C) -> (N, m, P*B, d), padded tokens zero
        x = F.pad(x, (0, 0, 0, block - t)) if block != t else x
        return x.reshape(n, p * block, num_heads, x.shape[-1] // num_heads).transpose(1, 2)

    # routed[n, p, r]: query region p of sample n attends to key region r. The BlockMask's block lists are what
    # the fused kernel visits; the mask_mod states the same pattern per token (eager FlexAttention evaluates
    # only the mask_mod) and hides the padded key tokens of each block
    routed = torch.zeros(n, p, p, dtype=torch.bool, device=q.device).scatter_(2, idx, True)

    def routed_real_keys(b, h, q_idx, kv_idx):
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
BRA_IMPLS = {'reference': bra_reference, 'fast': bra_fast, 'flex': bra_flex}


def check_bra_impl(impl, owner):
    """Return ``impl`` if it is a key of :data:`BRA_IMPLS`, else raise ``ValueError`` naming ``owner``.

    The message keeps the shared vocabulary (:data:`IMPLS`) first and names BRA's extra ``'flex'`` after it.
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
    def forward(ctx, x, weight, bias):
        ctx.save_for_backward(x, weight)
        ctx.has_bias = bias is not None
        return F.conv2d(x, weight, bias, padding=weight.shape[-1] // 2, groups=x.shape[1])

    @staticmethod
    @amp_backward
    def backward(ctx, grad):
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


def _lepe_fast(conv, v_map):
    """``conv(v_map)`` through :class:`_DepthwiseConvCL` where it applies (CPU, float32, no autocast, square kernel).

    The hand-written backward works around oneDNN's slow depthwise backward; on CUDA cuDNN's own channels-last
    depthwise kernels are used.
    """
    if (torch.is_grad_enabled() and v_map.device.type == 'cpu' and v_map.dtype == torch.float32
            and not autocast_enabled('cpu') and conv.kernel_size[0] == conv.kernel_size[1]):
        return _DepthwiseConvCL.apply(v_map, conv.weight, conv.bias)
    return conv(v_map)


def _check_side_dwconv(side_dwconv):
    if (isinstance(side_dwconv, bool) or not isinstance(side_dwconv, int) or side_dwconv < 0
            or (side_dwconv > 0 and side_dwconv % 2 == 0)):
        raise ValueError(f'side_dwconv must be 0 (no LePE) or an odd positive kernel size, got {side_dwconv!r}')


def _lepe_conv(channels, side_dwconv):
    """The LePE depthwise conv (``None`` when ``side_dwconv == 0``)."""
    if side_dwconv == 0:
        return None
    return nn.Conv2d(channels, channels, side_dwconv, padding=side_dwconv // 2, groups=channels)


def _forward_via_nhwc(op: nn.Module, x: torch.Tensor, channels_last_output: bool) -> torch.Tensor:
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

    Steps, for an input that is already normalised (the block's ``norm1`` runs before this layer):

    1. ``auto_pad``: zero-pad the input at the bottom/right to a multiple of ``n_win`` *before* the qkv
       projection, so padded tokens carry the projection biases. Nothing is masked; the output is cropped.
    2. Split the map into ``n_win x n_win`` regions (row-major), project to q, k (``qk_dim``) and v (``embed_dims``).
    3. Route: region means of q and k (padded tokens included, detached), logits ``(q_r * s) @ k_r^T``,
       keep the ``topk`` best key regions per query region.
    4. Attend from every query token to all tokens of its top-k regions, per head (head-major channel
       split), with scale ``s``.
    5. Add the LePE (depthwise ``side_dwconv`` conv on the padded V map), project with ``proj``, crop.

    The scale ``s`` is ``qk_dim ** -0.5`` (the *full* qk_dim, not the head dim), as in the official code.

    Args:
        embed_dims (int): Input/output channels C (also the V channels).
        num_heads (int): Number of heads; must divide ``embed_dims`` and ``qk_dim``. Default: 8.
        n_win (int): Regions per side. Default: 7.
        topk (int): Routed regions per query region, ``1 <= topk <= n_win**2``. Default: 4.
        qk_dim (int, optional): Channels of q and k. Default: ``embed_dims``.
        qk_scale (float, optional): Override of the scale ``qk_dim ** -0.5``. Default: None.
        side_dwconv (int): LePE kernel size; 0 disables it. Default: 5.
        auto_pad (bool): Pad inputs whose H/W do not divide by ``n_win``; otherwise such inputs raise.
            Default: False.
        impl (str): ``'fast'`` (default), ``'reference'`` (a line-by-line equivalent of the authors' maths) or
            ``'flex'`` (block-sparse FlexAttention without a K/V gather, :func:`bra_flex`; BRA only). All route
            identically; outputs agree to float rounding.

    Shapes:
        - input: (N, C, H, W), the normalised feature map.
        - output: (N, C, H, W), contiguous. :meth:`forward_nhwc`: (N, H, W, C) in and out.

    Attributes:
        record_routing (bool): when set to True, every forward stores the (N, n_win**2, topk) int64
            region indices in ``routing_idx`` (for tests and inspection). Off by default.
    """

    impls = tuple(BRA_IMPLS)

    @ImplOperator.impl.setter
    def impl(self, value):
        # BRA's own message: the shared vocabulary first, then its extra 'flex'
        self._impl = check_bra_impl(value, type(self).__name__)

    def __init__(self, embed_dims, num_heads=8, n_win=7, topk=4, qk_dim=None, qk_scale=None, side_dwconv=5,
                 auto_pad=False, impl=DEFAULT_IMPL):
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
        self.routing_idx = None

    def extra_repr(self):
        return (f'embed_dims={self.embed_dims}, qk_dim={self.qk_dim}, num_heads={self.num_heads}, '
                f'n_win={self.n_win}, '
                f'topk={self.topk}, scale={self.scale:.6g}, auto_pad={self.auto_pad}, impl={self.impl!r}')

    def forward(self, x: torch.Tensor, channels_last_output: bool = False) -> torch.Tensor:
        """``channels_last_output=True`` (what BiFormer's ``'fast'`` block passes) returns the (N, C, H, W) result
        with channels-last strides instead of copying it into a contiguous map; the call still goes through
        the module, so forward hooks see it."""
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
        """:meth:`forward` on an (N, H, W, C) map, returning (N, H, W, C): on channels-last memory (BiFormer's
        ``'fast'`` block) the permute to tokens is free. Same values as :meth:`forward`."""
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
    def explain(self, x: torch.Tensor, query_yx: tuple[int, int], routing_idx: torch.Tensor | None = None) -> dict:
        """Where one query token attends: its region, its routed regions and the token attention inside them.

        Runs the forward's own steps on the first sample (:meth:`_project`, :func:`_route`,
        :func:`_gather_regions`, :func:`_routed_weights`), i.e. the ``'reference'`` token attention, which the
        other impls equal up to float rounding.

        Args:
            x (Tensor): the operator's input (N, C, h, w); only sample 0 is explained.
            query_yx (tuple[int, int]): query token on the (h, w) map.
            routing_idx (Tensor, optional): (n_win**2, topk) region indices a forward returned for ``x``
                (``record_routing``); recomputed (the same) when None.

        Returns:
            dict: ``region`` (int, the query's region), ``routed`` (list[int], its top-k regions in routed
            order), ``per_head`` (Tensor (heads, topk*T): weights over the gathered tokens, routed order,
            row-major inside a region), ``weights`` (Tensor (Hp, Wp): head mean placed on the padded map, 0
            outside the routed regions), ``layout`` (``(Hp, Wp, rh, rw)``, :meth:`region_layout`) and
            ``caption``.
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
        embed_dims (int): Input/output channels C.
        num_heads (int): Number of heads; must divide ``embed_dims``. Default: 8.
        qkv_bias (bool): Bias in the qkv projection. Default: False.
        qk_scale (float, optional): Override of ``(embed_dims // num_heads) ** -0.5``. Default: None.
        side_dwconv (int): LePE kernel size; 0 disables it. Default: 5.
        impl (str): ``'fast'`` (default: fused ``scaled_dot_product_attention``) or ``'reference'`` (explicit
            logits and softmax, as the authors write it). Same values up to float rounding.

    Shapes:
        - input: (N, C, H, W) (already normalised), any H, W.
        - output: (N, C, H, W), contiguous. :meth:`forward_nhwc`: (N, H, W, C) in and out.
    """

    def __init__(self, embed_dims, num_heads=8, qkv_bias=False, qk_scale=None, side_dwconv=5, impl=DEFAULT_IMPL):
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

    def extra_repr(self):
        return f'embed_dims={self.embed_dims}, num_heads={self.num_heads}, scale={self.scale:.6g}, impl={self.impl!r}'

    def forward(self, x: torch.Tensor, channels_last_output: bool = False) -> torch.Tensor:
        """Same contract as :meth:`BiLevelRoutingAttention.forward`."""
        return _forward_via_nhwc(self, x, channels_last_output)

    def forward_nhwc(self, x):
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
