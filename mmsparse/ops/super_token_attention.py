"""Super Token Attention (STA) from STViT (Huang et al., CVPR 2023), NCHW in and out.

The operator has three steps (spec ``stvit.md`` §2.5):

1. *Super-token sampling*: every pixel is softly associated with the 9 super tokens of its own cell's 3×3
   neighbourhood; super tokens are the association-weighted means of their pixels (``n_iter`` rounds).
2. *Refinement*: multi-head self-attention among the super tokens (:class:`TokenMHSA`).
3. *Upsampling*: every pixel becomes the association-weighted sum of its 9 refined neighbours.

A super-token size of 1 makes STA plain global MHSA over all pixels.

Implementation contract. Steps 1 and 3 are pure functions of tensors, one per ``impl`` in :data:`STA_IMPLS`:
``fn(x, stoken_size, n_iter, scale, refine) -> (out, extras)`` with ``x`` already normalised, ``refine`` a
callable on ``(B, C, hh, ww)`` maps, ``out`` of ``x``'s shape and ``extras`` a dict holding
``stoken_refine_in``, ``stoken_refine_out`` and ``association`` (see :func:`sta_reference`). ``'reference'``
(:func:`sta_reference`) and ``'fast'`` (the default, :func:`sta_fast`); the tests compare both against the
authors' fixtures. The refinement MHSA follows the same ``impl`` (explicit softmax vs fused SDPA).

The reference entry keeps the authors' numerics, quirks included: affinity scale from the full channel width,
association under ``no_grad``, zero padding (after the norm, unmasked), an unmasked 9-way softmax with
out-of-grid neighbours as zero vectors, and the ``+1e-12`` normalisation. Instead of the authors' frozen
``eye(9)`` convolutions it uses :func:`torch.nn.functional.unfold` / :func:`~torch.nn.functional.fold`, which
compute the same neighbourhood gather and its transpose.

:meth:`SuperTokenAttention.explain` returns the soft association of the pixels with the super tokens and the
refinement's attention among super tokens, from the same steps the forward runs.
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F
from einops import rearrange

from mmsparse.registry import MODELS
from mmsparse.utils.compat import autocast_enabled

from ._amp import amp_backward, amp_forward
from .checks import DEFAULT_IMPL, check_nchw, check_positive_int, check_rate, check_scale
from ._export import pad_needed
from .impl import ImplOperator

__all__ = ['TokenMHSA', 'SuperTokenAttention', 'STA_IMPLS',
           'sta_reference', 'sta_fast', 'neighbour_gather', 'neighbour_scatter']

#: the authors' epsilon in the normalisation of the aggregated super tokens
STA_EPS = 1e-12


def _pair(value, name):
    """``int`` or 2-sequence of positive ints -> tuple; anything else raises naming ``name``."""
    if isinstance(value, int) and not isinstance(value, bool):
        value = (value, value)
    if (not isinstance(value, (tuple, list)) or len(value) != 2
            or not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in value)):
        raise ValueError(f'{name} must be a positive int or a pair of positive ints, got {value!r}')
    return tuple(value)


def _pad_to_cells(x: torch.Tensor, stoken_size: tuple[int, int]) -> tuple[torch.Tensor, tuple[int, int]]:
    """Zero-pad a map right/bottom to whole super-token cells; returns it and the grid ``(hh, ww)`` of cells.

    Shapes:
        - x: (B, C, H0, W0).
        - output: (B, C, hh * h, ww * w) for a cell ``(h, w)``.
    """
    h0, w0 = x.shape[-2:]
    h, w = stoken_size
    # padded size written as cells x cell size (not h0 + (h - h0 % h) % h): the same number, but a form the
    # symbolic shapes of a dynamic-size export can simplify
    hh, ww = (h0 + h - 1) // h, (w0 + w - 1) // w
    pad_b, pad_r = hh * h - h0, ww * w - w0
    if pad_needed(pad_b, pad_r):
        x = F.pad(x, (0, pad_r, 0, pad_b))  # zeros after the norm, no mask: the authors' behaviour
    return x, (hh, ww)


def neighbour_gather(s):
    """3×3 neighbourhood of every super token: ``(B, C, hh, ww) -> (B, M, C, 9)``, ``M = hh·ww``.

    Neighbour ``k`` of cell ``(gy, gx)`` is the token at ``(gy + k // 3 - 1, gx + k % 3 - 1)``; neighbours
    outside the grid are zero vectors (the authors' ``Unfold`` with ``eye(9)`` kernels and padding 1).
    """
    return rearrange(F.unfold(s, 3, padding=1), 'b (c k) m -> b m c k', k=9)


def neighbour_scatter(t, grid):
    """Transpose of :func:`neighbour_gather`: ``(B, M, C, 9) -> (B, C, hh, ww)``.

    Entry ``k`` of cell ``g`` is added onto the super token it came from (``g`` + offset ``k``); entries that
    point outside the grid are dropped (the authors' ``Fold``).
    """
    return F.fold(rearrange(t, 'b m c k -> b (c k) m'), grid, 3, padding=1)


def _aggregate(pixels, assoc, den, grid):
    """Super tokens as association-weighted pixel means: ``Fold(Pᵀ A) / (Den + eps)``, ``(B, C, hh, ww)``."""
    num = neighbour_scatter(pixels.transpose(-1, -2) @ assoc, grid)
    return num / (den + STA_EPS)


def sta_reference(x, stoken_size, n_iter, scale, refine):
    """Super-token sampling, ``refine`` and upsampling, written with tensor ops (the authors' numerics).

    Args:
        x (Tensor): normalised input, shape (B, C, H0, W0).
        stoken_size (tuple[int, int]): super-token cell (h, w); the map is zero-padded right/bottom to a
            multiple of it.
        n_iter (int): association rounds (>= 1).
        scale (float): logit scale of the association (the authors use ``C ** -0.5``).
        refine (callable): maps super tokens (B, C, hh, ww) to refined ones of the same shape.

    Returns:
        tuple: ``out`` (B, C, H0, W0) and a dict with ``stoken_refine_in`` / ``stoken_refine_out``
        (B, C, hh, ww) and ``association`` (B, hh·ww, h·w, 9): for cell ``g`` and pixel ``t = ty·w + tx``
        of that cell, the softmax weights over the 9 neighbouring super tokens (no gradient).
    """
    b, c, h0, w0 = x.shape
    h, w = stoken_size
    x, (hh, ww) = _pad_to_cells(x, stoken_size)
    grid = (hh, ww)

    # Association, aggregation and normalisation run in float32 even under autocast: the 1e-12 underflows
    # in fp16 and the 9-way softmax / scatter-add lose precision.
    with torch.autocast(x.device.type, enabled=False):
        xf = x.float() if x.dtype in (torch.float16, torch.bfloat16) else x
        pixels = rearrange(xf, 'b c (hh h) (ww w) -> b (hh ww) (h w) c', h=h, w=w)
        with torch.no_grad():
            tokens = F.avg_pool2d(xf, (h, w))  # exact cell means, padded zeros included
            for it in range(n_iter):
                assoc = (pixels @ neighbour_gather(tokens) * scale).softmax(-1)  # (B, M, n, 9)
                den = neighbour_scatter(assoc.sum(2, keepdim=True).transpose(-1, -2), grid)  # (B, 1, hh, ww)
                if it < n_iter - 1:
                    tokens = _aggregate(pixels, assoc, den, grid)
        # the gradient reaches the pixels through the numerator only; A and Den are constants
        tokens = _aggregate(pixels, assoc, den, grid)
    if not autocast_enabled(x.device.type):
        tokens = tokens.to(x.dtype)  # a half input without autocast stays half

    refined = refine(tokens)
    neigh = neighbour_gather(refined)  # (B, M, C, 9)
    out = neigh @ assoc.to(neigh.dtype).transpose(-1, -2)  # (B, M, C, n)
    out = rearrange(out, 'b (hh ww) c (h w) -> b c (hh h) (ww w)', hh=hh, h=h)
    out = out[:, :, :h0, :w0]
    return out, dict(stoken_refine_in=tokens, stoken_refine_out=refined, association=assoc)


def _grid_neighbours(grid):
    """``(B, hh, ww, D) -> (B, hh*ww, 9, D)``: the 3×3 neighbourhood of every cell, zeros outside the grid.

    Same neighbour order as :func:`neighbour_gather` (``k = 3 * (dy + 1) + (dx + 1)``), built from nine shifted
    slices of the zero-padded grid in channels-last layout, so every neighbour is a contiguous ``D`` vector.
    """
    b, hh, ww, d = grid.shape
    padded = F.pad(grid, (0, 0, 1, 1, 1, 1))
    return torch.stack([padded[:, dy:dy + hh, dx:dx + ww] for dy in range(3) for dx in range(3)],
                       dim=3).view(b, hh * ww, 9, d)


def _grid_scatter(t, hh, ww):
    """Transpose of :func:`_grid_neighbours`: ``(B, hh*ww, 9, D) -> (B, hh, ww, D)``, out-of-grid entries dropped.

    Entry ``k`` of cell ``(gy, gx)`` belongs to the token at ``(gy + dy - 1, gx + dx - 1)`` with
    ``dy, dx = divmod(k, 3)``: nine shifted, zero-padded copies summed (out of place, cheap to differentiate).
    """
    b, _, _, d = t.shape
    t = t.view(b, hh, ww, 9, d)
    out = sum(F.pad(t[:, :, :, k], (0, 0, k % 3, 2 - k % 3, k // 3, 2 - k // 3)) for k in range(9))
    return out[:, 1:hh + 1, 1:ww + 1]


def _normalised_aggregate(pixels, assoc_t, hh, ww):
    """Super tokens ``(B, hh, ww, C)``: association-weighted pixel sums over their weight sums (+ eps).

    ``pixels``: (B, M, C, n) cell-major, ``assoc_t``: (B, M, 9, n). Numerator and denominator are scattered
    together as one ``C + 1``-channel tensor (fused normalisation). The association carries no gradient, so
    the denominator is a constant, as in the reference.
    """
    num_den = torch.cat([assoc_t @ pixels.transpose(-1, -2), assoc_t.sum(-1, keepdim=True)], dim=-1)
    agg = _grid_scatter(num_den, hh, ww)
    return agg[..., :-1] / (agg[..., -1:] + STA_EPS)


class _ContiguousGrad(torch.autograd.Function):
    """Identity whose backward makes the incoming gradient contiguous.

    The gradient of a cell-major tensor that is rearranged into an NCHW map arrives as a permuted view; CPU
    batched matmul then falls back to one small GEMM (plus a copy) per batch element, ~20x slower.
    """

    @staticmethod
    @amp_forward
    def forward(ctx, x):
        return x.view_as(x)

    @staticmethod
    @amp_backward
    def backward(ctx, grad):
        return grad.contiguous()


def sta_fast(x, stoken_size, n_iter, scale, refine):
    """Same contract and maths as :func:`sta_reference`, laid out for speed.

    - Pixels are copied once into a cell-major ``(B, M, C, n)`` buffer reused by every round (rows of pixels
      stay contiguous, so the copy is cheap); numerator and denominator of the aggregation are scattered
      onto the grid together (fused normalisation).
    - Super tokens stay channels-last; the 3×3 neighbourhood is nine shifted slices of the padded grid (no
      identity-kernel convolutions, no unfold/fold round trips), and every matmul runs on contiguous operands,
      which avoids the slow strided batched-matmul path the ``unfold`` layout hits on CPU.
    - Association rounds run without autograd; only the last aggregation and the upsampling are
      differentiated, as in the reference (A and the denominator are constants).
    """
    b, c, h0, w0 = x.shape
    h, w = stoken_size
    x, (hh, ww) = _pad_to_cells(x, stoken_size)

    with torch.autocast(x.device.type, enabled=False):
        xf = x.float() if x.dtype in (torch.float16, torch.bfloat16) else x
        # one copy into cell-major (B, M, C, n) layout, reused by every round: rows of w pixels stay contiguous,
        # which makes this copy (and its backward) far cheaper than a channels-last transpose
        pixels = rearrange(xf, 'b c (hh h) (ww w) -> b (hh ww) c (h w)', h=h, w=w)
        with torch.no_grad():
            tokens = pixels.mean(3).view(b, hh, ww, c)  # cell means, padded zeros included
            for it in range(n_iter):
                # (B, M, 9, n): neighbours on the rows, so the softmax runs over a strided axis of 9 with the
                # n pixels contiguous (vectorised), not over a last axis of 9
                assoc_t = (_grid_neighbours(tokens) @ pixels * scale).softmax(2)
                if it < n_iter - 1:
                    tokens = _normalised_aggregate(pixels, assoc_t, hh, ww)
        # the differentiable aggregation: gradients reach the pixels through the numerator only
        tokens = _normalised_aggregate(pixels, assoc_t, hh, ww).permute(0, 3, 1, 2)  # (B, C, hh, ww)
        del pixels  # not saved for the backward: free the map-sized copy before the upsampling
    if not autocast_enabled(x.device.type):
        tokens = tokens.to(x.dtype)

    refined = refine(tokens)
    neigh = _grid_neighbours(refined.permute(0, 2, 3, 1))  # (B, M, 9, C)
    out = _ContiguousGrad.apply(neigh.transpose(-1, -2) @ assoc_t.to(neigh.dtype))  # (B, M, C, n)
    out = rearrange(out, 'b (hh ww) c (h w) -> b c (hh h) (ww w)', hh=hh, h=h)
    out = out[:, :, :h0, :w0]
    return out, dict(stoken_refine_in=tokens, stoken_refine_out=refined, association=assoc_t.transpose(-1, -2))


#: ``impl`` -> super-token sampling + upsampling (see the module docstring for the contract)
STA_IMPLS = {'reference': sta_reference, 'fast': sta_fast}


@MODELS.register_module()
class TokenMHSA(ImplOperator, nn.Module):
    """Multi-head self-attention over all positions of an NCHW map (the authors' ``Attention``).

    The 1×1 ``qkv`` projection is laid out *per head*: output channels ``[3dj, 3dj+d)``, ``[3dj+d, 3dj+2d)``
    and ``[3dj+2d, 3dj+3d)`` are q, k and v of head ``j`` (not timm's ``[q|k|v]`` blocks). No mask, no
    positional bias.

    Args:
        embed_dims (int): channels C.
        num_heads (int): heads m; ``C`` must be divisible by it. Head dim ``d = C / m``.
        qkv_bias (bool): bias of the qkv projection. Default True (what STViT passes).
        qk_scale (float | None): logit scale; ``None`` means ``d ** -0.5``.
        attn_drop (float): dropout on the attention weights.
        proj_drop (float): dropout after the output projection.
        impl (str): ``'fast'`` (:func:`torch.nn.functional.scaled_dot_product_attention`, which picks a
            memory-efficient kernel where one exists) or ``'reference'`` (the explicit matrix). Same values up
            to float rounding.

    Shapes:
        (B, C, H, W) -> (B, C, H, W).
    """

    def __init__(self, embed_dims, num_heads, qkv_bias=True, qk_scale=None, attn_drop=0., proj_drop=0.,
                 impl=DEFAULT_IMPL):
        super().__init__()
        check_positive_int(embed_dims, 'embed_dims')
        check_positive_int(num_heads, 'num_heads')
        if embed_dims % num_heads:
            raise ValueError(f'num_heads={num_heads} must divide embed_dims={embed_dims}')
        self.impl = impl
        self.num_heads = num_heads
        self.embed_dims = embed_dims
        self.head_dims = embed_dims // num_heads
        self.scale = check_scale(qk_scale) if qk_scale is not None else self.head_dims ** -0.5
        self.qkv = nn.Conv2d(embed_dims, embed_dims * 3, 1, bias=qkv_bias)
        self.attn_drop = nn.Dropout(check_rate(attn_drop, 'attn_drop'))
        self.proj = nn.Conv2d(embed_dims, embed_dims, 1)
        self.proj_drop = nn.Dropout(check_rate(proj_drop, 'proj_drop'))

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        """q, k, v of every head: (B, C, H, W) -> (3, B, m, H*W, d)."""
        # per-head interleaved layout: (m, [q|k|v], d)
        return rearrange(self.qkv(x), 'b (m t d) hh ww -> t b m (hh ww) d', m=self.num_heads, t=3)

    def _weights(self, q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
        """Explicit attention weights ``softmax(q k^T * scale)``: (B, m, N, N), before dropout."""
        return (q @ k.transpose(-1, -2) * self.scale).softmax(-1)

    def forward(self, x):
        _, _, hgt, wdt = x.shape
        q, k, v = self._heads(x)
        p = self.attn_drop.p if self.training else 0.
        if self.impl == 'fast':
            out = F.scaled_dot_product_attention(q, k, v, dropout_p=p, scale=self.scale)
        else:
            out = self.attn_drop(self._weights(q, k)) @ v
        out = rearrange(out, 'b m (hh ww) d -> b (m d) hh ww', hh=hgt, ww=wdt)
        return self.proj_drop(self.proj(out))


@MODELS.register_module()
class SuperTokenAttention(ImplOperator, nn.Module):
    """Super Token Attention (STViT's ``StokenAttention``) on NCHW maps.

    Args:
        embed_dims (int): channels C.
        num_heads (int): heads of the super-token MHSA.
        stoken_size (int | tuple[int, int]): super-token cell (h, w). ``1`` / ``(1, 1)`` gives plain global
            MHSA over all positions. Any H × W input works: the map is zero-padded right/bottom to a multiple
            of the cell inside the operator, and the output is cropped back.
        n_iter (int): association rounds (the released models use 1).
        qkv_bias (bool): qkv bias of the MHSA. Default True.
        qk_scale (float | None): MHSA logit scale (default head_dim ** -0.5). The association scale is always
            ``C ** -0.5``, from the full channel width, as in the authors' code.
        attn_drop (float), proj_drop (float): dropout rates of the MHSA.
        impl (str): ``'fast'`` (default) or ``'reference'`` (the authors' numerics written with unfold/fold,
            explicit-softmax MHSA); they agree to float rounding.

    Shapes:
        (B, C, H, W) -> (B, C, H, W).

    State-dict keys: ``refine.qkv.{weight,bias}``, ``refine.proj.{weight,bias}`` (official
    ``stoken_refine.*``; the official frozen ``unfold/fold.weights`` are not needed).
    """

    def __init__(self, embed_dims, num_heads, stoken_size=8, n_iter=1, qkv_bias=True, qk_scale=None,
                 attn_drop=0., proj_drop=0., impl=DEFAULT_IMPL):
        super().__init__()
        check_positive_int(embed_dims, 'embed_dims')
        self.stoken_size = _pair(stoken_size, 'stoken_size')
        check_positive_int(n_iter, 'n_iter')
        self.embed_dims = embed_dims
        self.n_iter = n_iter
        self.scale = embed_dims ** -0.5  # association scale: full width, not head_dim (authors' choice)
        self.refine = TokenMHSA(embed_dims, num_heads, qkv_bias=qkv_bias, qk_scale=qk_scale,
                                attn_drop=attn_drop, proj_drop=proj_drop, impl=impl)
        self.impl = impl

    @ImplOperator.impl.setter
    def impl(self, value):
        # one switch for sampling and refinement
        ImplOperator.impl.fset(self, value)
        self.refine.impl = self._impl

    @property
    def is_global(self):
        """True when the super-token cell is 1×1, i.e. the operator is plain global MHSA."""
        return self.stoken_size == (1, 1)

    def _check(self, x):
        check_nchw(x, self.embed_dims, type(self).__name__)

    def forward_with_intermediates(self, x):
        """Return ``(out, extras)``; ``extras`` holds ``stoken_refine_in``, ``stoken_refine_out`` and
        ``association`` (see :func:`sta_reference`), or is empty for a 1×1 cell."""
        self._check(x)
        if self.is_global:
            return self.refine(x), {}
        return STA_IMPLS[self.impl](x, self.stoken_size, self.n_iter, self.scale, self.refine)

    def forward(self, x):
        return self.forward_with_intermediates(x)[0]

    @torch.no_grad()
    def association(self, x):
        """Final soft association of every pixel with its 9 neighbouring super tokens.

        Args:
            x (Tensor): normalised input (B, C, H, W) (what :meth:`forward` receives).

        Returns:
            Tensor: (B, 9, H, W); channel ``k`` is the weight of the super token at offset
            ``(k // 3 - 1, k % 3 - 1)`` from the pixel's own cell. Raises for a 1×1 cell (no super tokens).
        """
        if self.is_global:
            raise ValueError('association: stoken_size is (1, 1), this operator is plain global attention')
        return self._association_map(self.forward_with_intermediates(x)[1]['association'], x.shape[-2:])

    def _association_map(self, assoc: torch.Tensor, feat_hw: tuple[int, int]) -> torch.Tensor:
        """The cell-major ``association`` of a forward, (B, M, h*w, 9), as a cropped (B, 9, H, W) map."""
        h, w = self.stoken_size
        hh = math.ceil(feat_hw[0] / h)
        assoc = rearrange(assoc, 'b (hh ww) (h w) k -> b k (hh h) (ww w)', hh=hh, h=h, w=w)
        return assoc[:, :, :feat_hw[0], :feat_hw[1]]

    def _neighbour_index(self, k: torch.Tensor) -> torch.Tensor:
        """Grid index of neighbour ``k`` (B, H, W) of every pixel's own cell; -1 outside the grid."""
        height, width = k.shape[-2:]
        h, w = self.stoken_size
        hh, ww = math.ceil(height / h), math.ceil(width / w)
        gy = torch.arange(height, device=k.device).div(h, rounding_mode='floor').view(1, -1, 1)
        gx = torch.arange(width, device=k.device).div(w, rounding_mode='floor').view(1, 1, -1)
        ty, tx = gy + k // 3 - 1, gx + k % 3 - 1
        inside = (ty >= 0) & (ty < hh) & (tx >= 0) & (tx < ww)
        return torch.where(inside, ty * ww + tx, torch.full_like(k, -1))

    @torch.no_grad()
    def assignment(self, x):
        """Index of the super token each pixel is most associated with (argmax of :meth:`association`).

        Returns:
            LongTensor: (B, H, W) with row-major indices into the ``ceil(H/h) × ceil(W/w)`` super-token grid,
            or ``-1`` where the argmax is an out-of-grid (zero) neighbour.
        """
        return self._neighbour_index(self.association(x).argmax(1))

    @torch.no_grad()
    def explain(self, x: torch.Tensor, query_yx: tuple[int, int]) -> dict:
        """The super tokens of a map and, for one query pixel, its association and its super token's attention.

        One forward (:meth:`forward_with_intermediates`) on the first sample gives the association the
        upsampling uses; the refinement's attention weights come from :class:`TokenMHSA`'s own steps on the
        super tokens that forward refined (explicit softmax, which the ``'fast'`` SDPA equals up to rounding).

        Args:
            x (Tensor): the operator's input (B, C, H, W); only sample 0 is explained.
            query_yx (tuple[int, int]): query pixel on the (H, W) map.

        Returns:
            dict: ``association`` (Tensor (9, H, W), :meth:`association`), ``assignment`` (LongTensor (H, W),
            :meth:`assignment`), ``stoken_size``, ``grid`` (rows, cols of super tokens), ``stoken_attention``
            (Tensor (heads, rows, cols): attention of the query's own super token over all super tokens),
            ``weights`` (Tensor (rows, cols): the query pixel's association placed on the grid) and
            ``caption``. Raises ValueError for a 1×1 cell (plain global attention, no super tokens).
        """
        if self.is_global:
            raise ValueError('super-token size 1x1: this STA operator is plain global attention, no super tokens')
        self._check(x)
        x = x[:1]
        height, width = x.shape[-2:]
        fy, fx = query_yx
        if not (0 <= fy < height and 0 <= fx < width):
            raise ValueError(f'query {tuple(query_yx)} is outside the {height}x{width} feature map')
        _, extras = self.forward_with_intermediates(x)
        assoc = self._association_map(extras['association'], (height, width))[0]
        neighbours = self._neighbour_index(torch.arange(9, device=x.device).view(9, 1, 1).expand(9, height, width))
        h, w = self.stoken_size
        rows, cols = math.ceil(height / h), math.ceil(width / w)
        q, k, _ = self.refine._heads(extras['stoken_refine_in'])
        own = (fy // h) * cols + fx // w
        attn = self.refine._weights(q[:, :, own:own + 1], k)[0, :, 0]  # (heads, rows * cols)
        # out-of-grid neighbours are zero vectors in the forward: their weight lands nowhere
        inside = neighbours[:, fy, fx] >= 0
        weights = assoc.new_zeros(rows * cols).index_add_(0, neighbours[inside, fy, fx], assoc[inside, fy, fx])
        return dict(association=assoc, assignment=self._neighbour_index(assoc.argmax(0, keepdim=True))[0],
                    stoken_size=(h, w), grid=(rows, cols), stoken_attention=attn.view(-1, rows, cols),
                    weights=weights.view(rows, cols), caption=f'association with the {h}x{w} super tokens')

    def extra_repr(self):
        return f'stoken_size={self.stoken_size}, n_iter={self.n_iter}, impl={self.impl!r}'
