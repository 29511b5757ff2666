"""What the sparse attention operators of a built backbone look at, for one image.

Everything here works on any module tree that contains mmsparse operators (our three backbones, or a stock
backbone with :class:`~mmsparse.models.plugins.SparseAttnBlock` plugins): operators are found with
``isinstance`` over ``named_modules()``, never by module path, and located by the feature stride of their
input (``stage = log2(stride) - 2``, the convention of every 4-stage pyramid with a stride-4 stem).

One forward pass (:func:`capture_operator_inputs`) records, for every operator, the normalised map it received
and, for Bi-Level Routing Attention, the routing indices the operator itself computed (``record_routing``).
The per-family functions then read what to draw from that input:

- :func:`bra_token_attention`: the query's region, its top-k routed regions (the operator's own indices) and
  the token attention of the query over the tokens of those regions;
- :func:`sta_association`: STViT's super-token association and assignment (the operator's own methods);
- :func:`attnconv_global_attention`: CloFormer's global-branch attention of a query pixel over the pooled keys;
- :func:`attnconv_local_weights`: the effective weights with which AttnConv's local branch mixes the
  neighbourhood of a query pixel.

The token attention of BRA and both AttnConv maps are not outputs of the operators: they are *recomputed here,
for display*, from the operators' weights with the operators' formulas. ``tests/test_tools/test_visualization.py``
checks that they reproduce the operators' own outputs (weights x values == the attention output), so a change
of the operators that these functions do not follow fails a test instead of drawing something else.
"""
import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from einops import rearrange

from mmsparse import families
# maps.py reads these classes from here
from mmsparse.ops import AttnConv, BiLevelRoutingAttention, GlobalAttentionLePE, SuperTokenAttention  # noqa: F401

# OPERATOR_TYPES comes from the module's __getattr__
__all__ = ['OPERATOR_TYPES', 'OperatorCall', 'capture_operator_inputs', 'family_of', 'feature_point',  # noqa: F822
           'operator_types', 'bra_channels', 'bra_layout', 'bra_token_attention', 'sta_association',
           'attnconv_global_attention', 'attnconv_local_weights']


def operator_types():
    """The operator classes of every registered family (what :func:`capture_operator_inputs` records)."""
    return tuple(op.cls for name in families.list_families() for op in families.get_family(name).operators)


def __getattr__(name):
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
    routing_idx: torch.Tensor = field(default=None, repr=False)


def family_of(module):
    """The registered family of an operator instance ('biformer', ...; ``None`` for anything else)."""
    return families.family_of(module)


@torch.no_grad()
def capture_operator_inputs(backbone, img, types=None):
    """Run ``backbone(img)`` once and record every operator call (see :class:`OperatorCall`).

    Args:
        backbone (nn.Module): any module holding mmsparse operators; put it in eval mode first.
        img (Tensor): (1, 3, H, W) preprocessed image.
        types (tuple, optional): operator classes to record. Default: every registered family's operators.

    Returns:
        list[OperatorCall]: in call order. Empty when the backbone holds none of ``types``.
    """
    if img.dim() != 4 or img.shape[0] != 1:
        raise ValueError(f'img must be a (1, C, H, W) batch of one image, got shape {tuple(img.shape)}')
    types = operator_types() if types is None else tuple(types)
    operators = [(name, m) for name, m in backbone.named_modules() if isinstance(m, types)]
    calls, handles, recording = [], [], {}

    def pre_hook(name):
        def hook(module, args):
            x = args[0].detach()
            ratio = img.shape[-2] / x.shape[-2]
            stride = 2 ** max(0, round(math.log2(ratio)))
            calls.append(OperatorCall(name, module, x, stride, int(math.log2(stride)) - 2))
        return hook

    def post_hook(module, args, out):
        if isinstance(module, BiLevelRoutingAttention):
            calls[-1].routing_idx = module.routing_idx[0].clone()

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
    seen = {}
    for call in calls:
        call.block = seen.get(call.stride, 0)
        seen[call.stride] = call.block + 1
    return calls


def feature_point(point_xy, image_hw, feat_hw):
    """Image pixel ``(x, y)`` -> feature position ``(fy, fx)`` of an (h, w) map covering an (H, W) image."""
    x, y = point_xy
    (hgt, wdt), (h, w) = image_hw, feat_hw
    if not (0 <= x < wdt and 0 <= y < hgt):
        raise ValueError(f'point ({x}, {y}) is outside the {wdt}x{hgt} image')
    return min(int(y * h / hgt), h - 1), min(int(x * w / wdt), w - 1)


# --------------------------------------------------------------------------------------------------- BiFormer
def bra_channels(op):
    """``(qk_dim, v_dim)`` of a BRA operator, read from its ``qkv`` / ``proj`` layers (not from attribute names,
    which the embed_dims renaming may change): ``qkv`` outputs ``[q | k | v]``, ``proj`` maps v to the output."""
    v_dim = op.proj.in_features
    return (op.qkv.out_features - v_dim) // 2, v_dim


def bra_layout(op, feat_hw):
    """Region geometry of a BRA operator on an (h, w) map: ``(Hp, Wp, rh, rw)`` (padded map, region size)."""
    n = op.n_win
    hp, wp = math.ceil(feat_hw[0] / n) * n, math.ceil(feat_hw[1] / n) * n
    return hp, wp, hp // n, wp // n


@torch.no_grad()
def bra_token_attention(op, x, routing_idx, query_yx):
    """Where one query token of a BRA operator attends.

    The routed regions are the operator's own (``routing_idx``, from :func:`capture_operator_inputs`). The
    token attention inside them is *recomputed here for display* with the operator's formula: the input is
    zero-padded to a multiple of ``n_win``, projected by ``op.qkv``, split into ``op.num_heads`` head-major
    heads, and ``softmax(scale * q k^T)`` is taken over the tokens of the routed regions in their routed order,
    row-major inside each region (the order in which the operator gathers them).

    Args:
        op (BiLevelRoutingAttention): the operator.
        x (Tensor): its input (1, C, h, w).
        routing_idx (Tensor): (n_win**2, topk) region indices the operator returned for ``x``.
        query_yx (tuple[int, int]): query token on the (h, w) map.

    Returns:
        dict: ``region`` (int, the query's region), ``routed`` (list[int], its top-k regions in routed order),
        ``per_head`` (Tensor (heads, topk*T): the attention weights over the gathered tokens),
        ``weights`` (Tensor (Hp, Wp): the head-mean weights placed on the padded map, 0 outside the routed
        regions) and ``layout`` (``(Hp, Wp, rh, rw)``).
    """
    n = op.n_win
    h, w = x.shape[-2:]
    hp, wp, rh, rw = bra_layout(op, (h, w))
    fy, fx = query_yx
    if not (0 <= fy < h and 0 <= fx < w):
        raise ValueError(f'query {query_yx} is outside the {h}x{w} feature map')
    xp = F.pad(x, (0, wp - w, 0, hp - h))
    tokens = rearrange(xp, 'n c (j h) (i w) -> n (j i) (h w) c', j=n, i=n)
    qk_dim, v_dim = bra_channels(op)
    q, k, _ = op.qkv(tokens).split([qk_dim, qk_dim, v_dim], dim=-1)
    region = (fy // rh) * n + fx // rw
    token = (fy % rh) * rw + fx % rw
    routed = routing_idx[region].long()
    m = op.num_heads
    q_h = q[0, region, token].view(m, -1)  # head-major split
    k_h = k[0, routed].reshape(routed.numel() * rh * rw, m, -1)
    per_head = (torch.einsum('md,smd->ms', q_h * op.scale, k_h)).softmax(-1)
    placed = torch.zeros(n * n, rh * rw, dtype=per_head.dtype, device=per_head.device)
    placed[routed] = per_head.mean(0).view(routed.numel(), rh * rw)
    weights = rearrange(placed, '(j i) (h w) -> (j h) (i w)', j=n, h=rh)
    return dict(region=int(region), routed=[int(r) for r in routed], per_head=per_head, weights=weights,
                layout=(hp, wp, rh, rw))


# ------------------------------------------------------------------------------------------------------ STViT
@torch.no_grad()
def sta_association(op, x):
    """Super-token association of an STA operator's input, through the operator's own methods.

    Returns:
        dict: ``assignment`` (LongTensor (h, w): :meth:`SuperTokenAttention.assignment`, -1 for out-of-grid),
        ``association`` (Tensor (9, h, w): :meth:`SuperTokenAttention.association`), ``stoken_size`` (h, w)
        and ``grid`` (rows, cols of super tokens). Raises ValueError for a 1x1 (global) operator.
    """
    if op.is_global:
        raise ValueError('super-token size 1x1: this STA operator is plain global attention, no super tokens')
    sh, sw = op.stoken_size
    h, w = x.shape[-2:]
    return dict(assignment=op.assignment(x)[0], association=op.association(x)[0], stoken_size=(sh, sw),
                grid=(math.ceil(h / sh), math.ceil(w / sw)))


# -------------------------------------------------------------------------------------------------- CloFormer
def _pool(op, x):
    # AttnConv's key/value pooling (ceil_mode, border windows average their real pixels only)
    if op.window_size == 1:
        return x
    return F.avg_pool2d(x, op.window_size, op.window_size, ceil_mode=True, count_include_pad=False)


@torch.no_grad()
def attnconv_global_attention(op, x, query_yx):
    """Attention of one query pixel of AttnConv's global branch over its average-pooled keys.

    *Recomputed here for display* with the operator's formula: ``q = global_q(x)`` at the query,
    ``k = global_kv(AvgPool_ws(x))`` (the first half of the channels), heads channel-major,
    ``softmax(scale * q k^T)``.

    Returns:
        dict: ``per_head`` (Tensor (global heads, M)), ``weights`` (Tensor (hk, wk): head mean on the pooled
        grid) and ``window_size``. Raises ValueError when the operator has no global heads.
    """
    if not op.global_heads:
        raise ValueError('this AttnConv has no global group (group_split[-1] == 0)')
    fy, fx = query_yx
    d = op.head_dim
    q = op.global_q(x)[0, :, fy, fx].view(op.global_heads, d)
    kv = op.global_kv(_pool(op, x))
    hk, wk = kv.shape[-2:]
    k = rearrange(kv[0, :op.global_heads * d], '(m d) hk wk -> m (hk wk) d', d=d)
    per_head = torch.einsum('md,mkd->mk', op.scale * q, k).softmax(-1)
    return dict(per_head=per_head, weights=per_head.mean(0).view(hk, wk), window_size=op.window_size)


@torch.no_grad()
def attnconv_local_weights(op, x, query_yx):
    """How AttnConv's local branch mixes the neighbourhood of one query pixel, per local group.

    The local branch computes ``out = gate * v`` with ``v = DW_k(u_v)`` (``u = qkvs[g](x)``, last third) and
    the context-aware gate ``gate = tanh(scale * AttnMap(q * k))``. At the query pixel ``p`` this is
    ``out[c] = gate[c] * (sum_o W[c, o] u_v[c, p + o] + b[c])``, so ``gate[c] * W[c, o]`` is the weight given
    to neighbour ``o`` in channel ``c``. *Recomputed here for display* from the operator's layers.

    Returns:
        list[dict]: one per non-empty local group: ``kernel_size``, ``gate`` (Tensor (L,)), ``per_channel``
        (Tensor (L, k, k): ``gate[c] * W[c, o]``), ``weights`` (Tensor (k, k): mean over channels of
        ``|gate[c] * W[c, o]|``).
    """
    fy, fx = query_yx
    groups = []
    for to_qkv, mixer, attn_map in zip(op.qkvs, op.convs, op.act_blocks):
        q, k, _ = mixer(to_qkv(x)).chunk(3, dim=1)
        gate = torch.tanh(attn_map(q * k) * op.scale)[0, :, fy, fx]
        ch = gate.numel()
        w_v = mixer.weight[2 * ch:, 0]  # (L, k, k): the depthwise kernels of v
        per_channel = gate[:, None, None] * w_v
        groups.append(dict(kernel_size=mixer.kernel_size[0], gate=gate, per_channel=per_channel,
                           weights=per_channel.abs().mean(0)))
    return groups
