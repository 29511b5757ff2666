"""Super Token Attention (STA) from STViT (Huang et al., CVPR 2023), NCHW in and out.

The operator has three steps (spec ``stvit.md`` §2.5):

1. *Super-token sampling*: every pixel is softly associated with the 9 super tokens of its own cell's 3×3
   neighbourhood; super tokens are the association-weighted means of their pixels (``n_iter`` rounds).
2. *Refinement*: multi-head self-attention among the super tokens (:class:`TokenMHSA`).
3. *Upsampling*: every pixel becomes the association-weighted sum of its 9 refined neighbours.

A super-token size of 1 makes STA plain global MHSA over all pixels.

Steps 1 and 3 are one function per ``impl`` in :data:`STA_IMPLS` (``'reference'``, ``'fast'``), with the
contract ``fn(x, stoken_size, n_iter, scale, refine) -> (out, extras)`` of :func:`sta_reference`. Both keep
the authors' numerics: association scale from the full channel width, association under ``no_grad``, zero
padding after the norm (unmasked), out-of-grid neighbours as zero vectors, the ``+1e-12`` normalisation.
"""
from __future__ import annotations

import math
from typing import Any, Callable

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


def _pair(value: Any, name: str) -> tuple[int, int]:
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


def neighbour_gather(s: torch.Tensor) -> torch.Tensor:
    """3×3 neighbourhood of every super token; out-of-grid neighbours are zero vectors.

    Neighbour ``k`` of cell ``(gy, gx)`` is the token at ``(gy + k // 3 - 1, gx + k % 3 - 1)``.

    Shapes:
        input (B, C, hh, ww); output (B, M, C, 9) with ``M = hh·ww``.
    """
    return rearrange(F.unfold(s, 3, padding=1), 'b (c k) m -> b m c k', k=9)


def neighbour_scatter(t: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """Transpose of :func:`neighbour_gather`; entries pointing outside the ``grid`` (hh, ww) are dropped.

    Shapes:
        input (B, M, C, 9); output (B, C, hh, ww).
    """
    return F.fold(rearrange(t, 'b m c k -> b (c k) m'), grid, 3, padding=1)


def _aggregate(pixels: torch.Tensor, assoc: torch.Tensor, den: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """Super tokens as association-weighted pixel means: ``Fold(Pᵀ A) / (Den + eps)``, ``(B, C, hh, ww)``."""
    num = neighbour_scatter(pixels.transpose(-1, -2) @ assoc, grid)
    return num / (den + STA_EPS)


def sta_reference(x: torch.Tensor, stoken_size: tuple[int, int], n_iter: int, scale: float,
                  refine: Callable[[torch.Tensor], torch.Tensor]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Super-token sampling, ``refine`` and upsampling with unfold/fold (the authors' numerics).

    Args:
        x: normalised input; zero-padded right/bottom to whole ``stoken_size`` cells (h, w) inside.
        n_iter: association rounds (>= 1).
        scale: association logit scale (the authors use ``C ** -0.5``).
        refine: maps super tokens (B, C, hh, ww) to refined ones of the same shape.

    Returns:
        ``out`` and ``extras``: ``stoken_refine_in`` / ``stoken_refine_out`` and ``association`` (no
        gradient), the softmax weights of pixel ``t = ty·w + tx`` of cell ``g`` over its 9 super tokens.

    Shapes:
        x, out (B, C, H0, W0); stoken_refine_* (B, C, hh, ww); association (B, hh·ww, h·w, 9).
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


def _grid_neighbours(grid: torch.Tensor) -> torch.Tensor:
    """``(B, hh, ww, D) -> (B, hh*ww, 9, D)``: the 3×3 neighbourhood of every cell, zeros outside the grid.

    Same neighbour order as :func:`neighbour_gather` (``k = 3 * (dy + 1) + (dx + 1)``), built from nine shifted
    slices of the zero-padded grid in channels-last layout, so every neighbour is a contiguous ``D`` vector.
    """
    b, hh, ww, d = grid.shape
    padded = F.pad(grid, (0, 0, 1, 1, 1, 1))
    return torch.stack([padded[:, dy:dy + hh, dx:dx + ww] for dy in range(3) for dx in range(3)],
                       dim=3).view(b, hh * ww, 9, d)


def _grid_scatter(t: torch.Tensor, hh: int, ww: int) -> torch.Tensor:
    """Transpose of :func:`_grid_neighbours`: ``(B, hh*ww, 9, D) -> (B, hh, ww, D)``, out-of-grid entries dropped.

    Entry ``k`` of cell ``(gy, gx)`` belongs to the token at ``(gy + dy - 1, gx + dx - 1)`` with
    ``dy, dx = divmod(k, 3)``: nine shifted, zero-padded copies summed (out of place, cheap to differentiate).
    """
    b, _, _, d = t.shape
    t = t.view(b, hh, ww, 9, d)
    out = sum(F.pad(t[:, :, :, k], (0, 0, k % 3, 2 - k % 3, k // 3, 2 - k // 3)) for k in range(9))
    return out[:, 1:hh + 1, 1:ww + 1]  # type: ignore[index]  # why: a sum of tensors is a Tensor, never 0


def _normalised_aggregate(pixels: torch.Tensor, assoc_t: torch.Tensor, hh: int, ww: int) -> torch.Tensor:
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
    def forward(ctx: Any, x: torch.Tensor) -> torch.Tensor:
        return x.view_as(x)

    @staticmethod
    @amp_backward
    def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:
        return grad.contiguous()


def sta_fast(x: torch.Tensor, stoken_size: tuple[int, int], n_iter: int, scale: float,
             refine: Callable[[torch.Tensor], torch.Tensor]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Same contract and maths as :func:`sta_reference`, laid out for speed (cell-major, channels-last)."""
    # why: contiguous matmul operands and shifted slices avoid the slow strided batched-matmul path of the
    # unfold layout on CPU; numerator and denominator are scattered together (fused normalisation)
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
STA_IMPLS: dict[str, Callable[..., tuple[torch.Tensor, dict[str, torch.Tensor]]]] = {
    'reference': sta_reference, 'fast': sta_fast}


@MODELS.register_module()
class TokenMHSA(ImplOperator, nn.Module):
    """Multi-head self-attention over all positions of an NCHW map (the authors' ``Attention``).

    The 1×1 ``qkv`` output is laid out *per head* ``(m, [q|k|v], d)``, not timm's ``[q|k|v]`` blocks.

    Args:
        embed_dims: channels C.
        num_heads: heads m; must divide C. Head dim ``d = C / m``.
        qk_scale: logit scale; ``None`` means ``d ** -0.5``.
        attn_drop: dropout on the attention weights.
        proj_drop: dropout after the output projection.
        impl: ``'fast'`` (SDPA) or ``'reference'`` (explicit softmax); same values up to float rounding.

    Shapes:
        (B, C, H, W) -> (B, C, H, W).
    """

    def __init__(self, embed_dims: int, num_heads: int, qkv_bias: bool = True, qk_scale: float | None = None,
                 attn_drop: float = 0., proj_drop: float = 0., impl: str = DEFAULT_IMPL) -> None:
        super().__init__()
        check_positive_int(embed_dims, 'embed_dims')
        check_positive_int(num_heads, 'num_heads')
        if embed_dims % num_heads:
            raise ValueError(f'num_heads={num_heads} must divide embed_dims={embed_dims}')
        self.impl = impl
        self.num_heads = num_heads
        self.embed_dims = embed_dims
        self.head_dims = embed_dims // num_heads
        scale = check_scale(qk_scale)
        self.scale: float = scale if scale is not None else self.head_dims ** -0.5
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

    def forward(self, x: torch.Tensor) -> torch.Tensor:
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
        embed_dims: channels C.
        num_heads: heads of the super-token MHSA.
        stoken_size: super-token cell (h, w); ``1`` gives plain global MHSA. Any H × W works (zero-padded to
            whole cells inside, output cropped back).
        n_iter: association rounds (the released models use 1).
        qk_scale: MHSA logit scale (default head_dim ** -0.5); the association scale is always ``C ** -0.5``.
        attn_drop, proj_drop: dropout rates of the MHSA.
        impl: ``'fast'`` or ``'reference'`` (unfold/fold, explicit softmax); they agree to float rounding.

    Shapes:
        (B, C, H, W) -> (B, C, H, W).

    State-dict keys: ``refine.qkv.{weight,bias}``, ``refine.proj.{weight,bias}`` (official
    ``stoken_refine.*``; the official frozen ``unfold/fold.weights`` are not needed).
    """

    def __init__(self, embed_dims: int, num_heads: int, stoken_size: int | tuple[int, int] = 8, n_iter: int = 1,
                 qkv_bias: bool = True, qk_scale: float | None = None, attn_drop: float = 0., proj_drop: float = 0.,
                 impl: str = DEFAULT_IMPL) -> None:
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

    @ImplOperator.impl.setter  # type: ignore[attr-defined]  # why: mypy cannot extend a base-class property
    def impl(self, value: str) -> None:
        # one switch for sampling and refinement
        ImplOperator.impl.fset(self, value)  # type: ignore[attr-defined]  # why: mypy sees no property
        self.refine.impl = self._impl

    @property
    def is_global(self) -> bool:
        """True when the super-token cell is 1×1, i.e. the operator is plain global MHSA."""
        return self.stoken_size == (1, 1)

    def _check(self, x: torch.Tensor) -> None:
        check_nchw(x, self.embed_dims, type(self).__name__)

    def forward_with_intermediates(self, x: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """``(out, extras)`` as in :func:`sta_reference`; ``extras`` is empty for a 1×1 cell."""
        self._check(x)
        if self.is_global:
            return self.refine(x), {}
        return STA_IMPLS[self.impl](x, self.stoken_size, self.n_iter, self.scale, self.refine)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_with_intermediates(x)[0]

    @torch.no_grad()
    def association(self, x: torch.Tensor) -> torch.Tensor:
        """Final soft association of every pixel with its 9 neighbouring super tokens; raises for a 1×1 cell.

        Channel ``k`` is the weight of the super token at offset ``(k // 3 - 1, k % 3 - 1)`` from the pixel's cell.

        Shapes:
            x (B, C, H, W) (what :meth:`forward` receives); output (B, 9, H, W).
        """
        if self.is_global:
            raise ValueError('association: stoken_size is (1, 1), this operator is plain global attention')
        return self._association_map(self.forward_with_intermediates(x)[1]['association'], x.shape[-2:])

    def _association_map(self, assoc: torch.Tensor, feat_hw: tuple[int, ...]) -> torch.Tensor:
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
    def assignment(self, x: torch.Tensor) -> torch.Tensor:
        """Row-major index of each pixel's most associated super token (argmax of :meth:`association`).

        ``-1`` where the argmax is an out-of-grid (zero) neighbour.

        Shapes:
            x (B, C, H, W); output (B, H, W) int64.
        """
        return self._neighbour_index(self.association(x).argmax(1))

    @torch.no_grad()
    def explain(self, x: torch.Tensor, query_yx: tuple[int, int]) -> dict[str, Any]:
        """Super tokens of sample 0 and, for one query pixel, its association and its super token's attention.

        Raises ``ValueError`` for a 1×1 cell (no super tokens) or a query outside the (H, W) map.

        Returns:
            ``association`` (9, H, W), ``assignment`` (H, W) int64, ``stoken_size``, ``grid`` (rows, cols),
            ``stoken_attention`` (heads, rows, cols) of the query's own super token (explicit softmax),
            ``weights`` (rows, cols): the query's association placed on the grid, and ``caption``.
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

    def extra_repr(self) -> str:
        return f'stoken_size={self.stoken_size}, n_iter={self.n_iter}, impl={self.impl!r}'
