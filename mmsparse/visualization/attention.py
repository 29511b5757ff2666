"""What the sparse attention operators of a built backbone look at, for one image.

Everything here works on any module tree that contains mmsparse operators (our three backbones, or a stock
backbone with :class:`~mmsparse.models.plugins.SparseAttnBlock` plugins): operators are found with
``isinstance`` over ``named_modules()``, never by module path, and located by the feature stride of their
input (``stage = log2(stride) - 2``, the convention of every 4-stage pyramid with a stride-4 stem).

One forward pass (:func:`capture_operator_inputs`) records, for every operator, the normalised map it received
and, for Bi-Level Routing Attention, the routing indices the operator itself computed (``record_routing``).

What to draw is the operators' own business: each operator's ``explain(x, query_yx)`` (reached through its
family spec, :meth:`~mmsparse.families.OperatorSpec.explainer`) runs the steps of its forward for one query and
returns the maps. The functions below only select from those explanations (no operator maths lives here):

- :func:`bra_token_attention`: the query's region, its top-k routed regions and the token attention of the
  query over the tokens of those regions (:meth:`BiLevelRoutingAttention.explain`);
- :func:`sta_association`: STViT's super-token association and assignment (:meth:`SuperTokenAttention.explain`);
- :func:`attnconv_global_attention`: CloFormer's global-branch attention of a query pixel over the pooled keys;
- :func:`attnconv_local_weights`: the effective weights with which AttnConv's local branch mixes the
  neighbourhood of a query pixel (both :meth:`AttnConv.explain`).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Sequence, cast

import torch

from mmsparse import families
# maps.py reads these classes from here
from mmsparse.ops import AttnConv, BiLevelRoutingAttention, GlobalAttentionLePE, SuperTokenAttention  # noqa: F401

# OPERATOR_TYPES comes from the module's __getattr__
__all__ = ['OPERATOR_TYPES', 'OperatorCall', 'capture_operator_inputs', 'family_of', 'feature_point',  # noqa: F822
           'operator_types', 'explain', 'bra_channels', 'bra_layout', 'bra_token_attention', 'sta_association',
           'attnconv_global_attention', 'attnconv_local_weights']


def operator_types() -> tuple[type[torch.nn.Module], ...]:
    """The operator classes of every registered family (what :func:`capture_operator_inputs` records)."""
    return tuple(op.cls for name in families.list_families() for op in families.get_family(name).operators)


def __getattr__(name: str) -> Any:
    # ``OPERATOR_TYPES`` is computed at each access, so a family registered after import is included
    if name == 'OPERATOR_TYPES':
        return operator_types()
    raise AttributeError(f'module {__name__!r} has no attribute {name!r}')


@dataclass
class OperatorCall:
    """One call of an operator during :func:`capture_operator_inputs`.

    Attributes:
        name (str): module path inside the backbone (informative only; nothing depends on it).
        module (nn.Module): the operator.
        x (Tensor): its input, (1, C, h, w), detached.
        stride (int): image size / feature size, rounded to a power of two.
        stage (int): ``log2(stride) - 2`` (0 for stride 4).
        block (int): position among the calls at the same stride, in call order.
        routing_idx (Tensor | None): for BRA, the (n_win**2, topk) region indices the operator returned.
    """
    name: str
    module: torch.nn.Module
    x: torch.Tensor
    stride: int
    stage: int
    block: int = 0
    routing_idx: torch.Tensor | None = field(default=None, repr=False)


def explain(op: torch.nn.Module, x: torch.Tensor, query_yx: tuple[int, int]) -> dict[str, Any]:
    """``op``'s explanation of query ``query_yx`` on its input ``x``, through its family spec's explainer.

    Raises ValueError when ``op`` belongs to no family or cannot explain itself.
    """
    spec = families.operator_spec(op)
    explainer = spec.explainer() if spec is not None else None
    if explainer is None:
        raise ValueError(f'{type(op).__name__} cannot explain itself (no explain hook or method)')
    return explainer(op, x, query_yx)


def family_of(module: torch.nn.Module) -> str | None:
    """The registered family of an operator instance ('biformer', ...; ``None`` for anything else)."""
    return families.family_of(module)


@torch.no_grad()
def capture_operator_inputs(backbone: torch.nn.Module, img: torch.Tensor,
                            types: Iterable[type[torch.nn.Module]] | None = None) -> list[OperatorCall]:
    """Run ``backbone(img)`` once (eval mode) and return every operator call, in call order.

    Args:
        img: (1, 3, H, W) preprocessed image; ValueError for any other shape.
        types: operator classes to record (default: every registered family's operators).
    """
    if img.dim() != 4 or img.shape[0] != 1:
        raise ValueError(f'img must be a (1, C, H, W) batch of one image, got shape {tuple(img.shape)}')
    types = operator_types() if types is None else tuple(types)
    operators = [(name, m) for name, m in backbone.named_modules() if isinstance(m, types)]
    calls: list[OperatorCall] = []
    handles: list[torch.utils.hooks.RemovableHandle] = []
    recording: dict[BiLevelRoutingAttention, bool] = {}

    def pre_hook(name: str) -> Callable[[torch.nn.Module, tuple[Any, ...]], None]:
        def hook(module: torch.nn.Module, args: tuple[Any, ...]) -> None:
            x = args[0].detach()
            ratio = img.shape[-2] / x.shape[-2]
            stride = 2 ** max(0, round(math.log2(ratio)))
            calls.append(OperatorCall(name, module, x, stride, int(math.log2(stride)) - 2))
        return hook

    def post_hook(module: torch.nn.Module, args: tuple[Any, ...], out: Any) -> None:
        if isinstance(module, BiLevelRoutingAttention):
            # record_routing is on for every recorded BRA, so its forward has just set routing_idx
            calls[-1].routing_idx = cast(torch.Tensor, module.routing_idx)[0].clone()

    for name, m in operators:
        if isinstance(m, BiLevelRoutingAttention):
            recording[m] = m.record_routing
            m.record_routing = True
        handles.append(m.register_forward_pre_hook(pre_hook(name)))
        handles.append(m.register_forward_hook(post_hook))
    try:
        backbone(img)
    finally:
        for h in handles:
            h.remove()
        for m, flag in recording.items():
            m.record_routing = flag
    seen: dict[int, int] = {}
    for call in calls:
        call.block = seen.get(call.stride, 0)
        seen[call.stride] = call.block + 1
    return calls


def feature_point(point_xy: tuple[int, int], image_hw: Sequence[int], feat_hw: Sequence[int]) -> tuple[int, int]:
    """Image pixel ``(x, y)`` -> ``(fy, fx)`` on an (h, w) map covering the (H, W) image; ValueError outside."""
    x, y = point_xy
    (hgt, wdt), (h, w) = image_hw, feat_hw
    if not (0 <= x < wdt and 0 <= y < hgt):
        raise ValueError(f'point ({x}, {y}) is outside the {wdt}x{hgt} image')
    return min(int(y * h / hgt), h - 1), min(int(x * w / wdt), w - 1)


# --------------------------------------------------------------------------------------------------- BiFormer
def bra_channels(op: Any) -> tuple[int, int]:
    """``(qk_dim, v_dim)`` of a BRA operator, read from its ``qkv`` / ``proj`` layers (not from attribute names,
    which the embed_dims renaming may change): ``qkv`` outputs ``[q | k | v]``, ``proj`` maps v to the output."""
    v_dim = op.proj.in_features
    return (op.qkv.out_features - v_dim) // 2, v_dim


def bra_layout(op: Any, feat_hw: tuple[int, int]) -> tuple[int, int, int, int]:
    """Region geometry of a BRA operator on an (h, w) map: ``(Hp, Wp, rh, rw)`` (its ``region_layout``)."""
    return op.region_layout(tuple(feat_hw))


@torch.no_grad()
def bra_token_attention(op: Any, x: torch.Tensor, routing_idx: torch.Tensor | None,
                        query_yx: tuple[int, int]) -> dict[str, Any]:
    """Where one query token of a BRA operator attends: :meth:`BiLevelRoutingAttention.explain`.

    Args:
        op (BiLevelRoutingAttention): the operator.
        x (Tensor): its input (1, C, h, w).
        routing_idx (Tensor | None): (n_win**2, topk) region indices the operator returned for ``x`` (from
            :func:`capture_operator_inputs`); None lets the operator route again.
        query_yx (tuple[int, int]): query token on the (h, w) map.

    Returns:
        dict: ``region``, ``routed``, ``per_head`` (heads, topk*T), ``weights`` (Hp, Wp), ``layout``
        ``(Hp, Wp, rh, rw)`` and ``caption`` (see the operator's ``explain``).
    """
    return op.explain(x, query_yx, routing_idx=routing_idx)


# ------------------------------------------------------------------------------------------------------ STViT
@torch.no_grad()
def sta_association(op: Any, x: torch.Tensor) -> dict[str, Any]:
    """Super-token association of an STA operator's input (:meth:`SuperTokenAttention.explain`).

    Returns:
        ``assignment`` (LongTensor (h, w), -1 out-of-grid), ``association`` (9, h, w), ``stoken_size`` and
        ``grid`` (super-token rows, cols). ValueError for a 1x1 (global) operator.
    """
    out = explain(op, x, (0, 0))  # the query only adds its own maps; the association covers every pixel
    return {key: out[key] for key in ('assignment', 'association', 'stoken_size', 'grid')}


# -------------------------------------------------------------------------------------------------- CloFormer
@torch.no_grad()
def attnconv_global_attention(op: Any, x: torch.Tensor, query_yx: tuple[int, int]) -> dict[str, Any] | None:
    """Attention of one query pixel of AttnConv's global branch over its pooled keys (:meth:`AttnConv.explain`).

    Returns:
        dict: ``per_head`` (Tensor (global heads, M)), ``weights`` (Tensor (hk, wk): head mean on the pooled
        grid) and ``window_size``. Raises ValueError when the operator has no global heads.
    """
    if not op.global_heads:
        raise ValueError('this AttnConv has no global group (group_split[-1] == 0)')
    return explain(op, x, query_yx)['global']


@torch.no_grad()
def attnconv_local_weights(op: Any, x: torch.Tensor, query_yx: tuple[int, int]) -> list[dict[str, Any]]:
    """Weights ``gate[c] * W[c, o]`` with which AttnConv's local branch mixes a query's neighbours (per group).

    Returns:
        One dict per non-empty local group: ``kernel_size``, ``gate`` (L,), ``per_channel`` (L, k, k) and
        ``weights`` (k, k): channel mean of ``|gate[c] * W[c, o]|`` (:meth:`AttnConv.explain`).
    """
    return explain(op, x, query_yx)['local']
