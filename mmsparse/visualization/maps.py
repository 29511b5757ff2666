"""One picture per stage of a backbone's sparse attention, for one image and a few query points.

:func:`attention_maps` is what ``tools/visualization/attention_map.py`` draws: it runs the backbone once
(:func:`~mmsparse.visualization.attention.capture_operator_inputs`), picks one operator call per stage and
draws, per family:

- BiFormer (BRA): per query point, the query's region, its routed regions and the token attention inside them;
- STViT (STA): the super-token assignment of every pixel (one panel, the points do not matter);
- CloFormer (AttnConv): per query point, the global branch's attention over the pooled keys and a zoom on the
  local branch's weights around the query (one per local group).

Every operator explains itself: its spec's ``explain`` hook (or its own ``explain(x, query_yx)`` method,
:func:`~mmsparse.visualization.attention.explain`) returns the maps; this module only draws them. Operators of a
family without a drawing of its own here are drawn from the explanation's ``weights`` grid, as a heat map.

Stages whose operator has nothing sparse to show (BiFormer's global stage 4, STViT's 1x1 super tokens, an
operator that cannot explain itself) are listed in ``skipped`` with the reason.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Collection, Sequence

import numpy as np
import torch

from mmsparse import families
from . import attention as A
from . import drawing as D

__all__ = ['StageMap', 'attention_maps']


@dataclass
class StageMap:
    """The drawing of one stage.

    Attributes:
        family: the operator's family ('biformer', 'stvit', 'cloformer' or one registered later).
        block: call order of the drawn operator among those at its stride.
        name: the operator's module path.
        panels: BGR pictures, one per query point (and per AttnConv branch).
        captions: one per panel.
        meta: one JSON-serialisable dict per panel: ``kind`` and what was drawn (BRA: ``point``, ``feature_yx``,
            ``region``, ``routed``).
        summary: one line on the operator.
    """
    family: str
    stage: int
    stride: int
    block: int
    name: str
    panels: list[np.ndarray] = field(default_factory=list)
    captions: list[str] = field(default_factory=list)
    meta: list[dict[str, Any]] = field(default_factory=list)
    summary: str = ''


def _drawable(call):
    op = call.module
    if isinstance(op, A.GlobalAttentionLePE):
        return 'global attention + LePE (no routing)'
    if isinstance(op, A.SuperTokenAttention) and op.is_global:
        return 'super-token size 1x1: plain global attention (no super tokens)'
    if families.operator_spec(op).explainer() is None:
        return f'{type(op).__name__} cannot explain itself (no explain hook or method)'
    return None


def _pick(calls: Sequence[A.OperatorCall], block: int) -> A.OperatorCall:
    """The call to draw in one stage: index ``block`` among the stage's calls (negative from the end)."""
    if not -len(calls) <= block < len(calls):
        raise ValueError(f'block {block} does not exist: stage {calls[0].stage} has {len(calls)} attention '
                         f'blocks')
    return calls[block]


def _outside(box: tuple[int, int, int, int]) -> bool:
    x0, y0, x1, y1 = box
    return x1 <= x0 or y1 <= y0


def _biformer(call, img, points, seed):
    op, hw = call.module, call.x.shape[-2:]
    sm = StageMap('biformer', call.stage, call.stride, call.block, call.name,
                  summary=f'BRA n_win={op.n_win}, topk={op.topk}, feature map {hw[0]}x{hw[1]}')
    for point in points:
        fyx = A.feature_point(point, img.shape[:2], hw)
        att = A.explain(op, call.x, fyx)
        sm.panels.append(D.draw_routing(img, att, op.n_win, call.stride, point))
        # auto_pad: regions wholly in the zero padding (right / bottom of the image) can be routed to but not drawn
        hidden = [r for r in att['routed'] if _outside(D.region_box(r, op.n_win, att['layout'][2:], call.stride,
                                                                    img.shape[:2]))]
        note = f'; {len(hidden)} in the padding' if hidden else ''
        sm.captions.append(f'query ({point[0]}, {point[1]}): region {att["region"]} (cyan)\n'
                           + (f'top-{op.topk}: {att["routed"]}{note}' if op.topk <= 4
                              else f'top-{op.topk} routed (yellow){note}'))
        sm.meta.append(dict(kind='bra', point=list(point), feature_yx=list(fyx), region=att['region'],
                            routed=att['routed'], in_padding=hidden, n_win=op.n_win,
                            region_hw=list(att['layout'][2:])))
    return sm


def _stvit(call, img, points, seed):
    op, hw = call.module, call.x.shape[-2:]
    assoc = A.explain(op, call.x, (0, 0))  # the assignment covers every pixel: the query does not matter
    labels = assoc['assignment'].cpu().numpy()
    n = len(set(labels[labels >= 0].ravel().tolist()))
    sm = StageMap('stvit', call.stage, call.stride, call.block, call.name,
                  summary=f'STA super tokens {op.stoken_size[0]}x{op.stoken_size[1]} cells, grid '
                          f'{assoc["grid"][0]}x{assoc["grid"][1]}, feature map {hw[0]}x{hw[1]}')
    sm.panels.append(D.draw_association(img, labels, seed=seed))
    sm.captions.append(f'super-token assignment: {n} super tokens used')
    sm.meta.append(dict(kind='sta', grid=list(assoc['grid']), used=n))
    return sm


def _cloformer(call, img, points, seed):
    op, hw = call.module, call.x.shape[-2:]
    sm = StageMap('cloformer', call.stage, call.stride, call.block, call.name,
                  summary=f'AttnConv kernels {op.kernel_sizes}, global heads {op.global_heads}, pooling '
                          f'{op.window_size}, feature map {hw[0]}x{hw[1]}')
    for point in points:
        fyx = A.feature_point(point, img.shape[:2], hw)
        explained = A.explain(op, call.x, fyx)
        glob = explained['global']
        if glob is not None:
            sm.panels.append(D.draw_heatmap(img, glob['weights'], op.window_size * call.stride, point))
            sm.captions.append(f'query ({point[0]}, {point[1]}): global attention\n'
                               f'over {op.window_size}x{op.window_size}-pooled keys')
            sm.meta.append(dict(kind='attnconv_global', point=list(point), feature_yx=list(fyx)))
        for group in explained['local']:
            k = group['kernel_size']
            sm.panels.append(D.draw_local_window(img, group['weights'], fyx, call.stride))
            sm.captions.append(f'query ({point[0]}, {point[1]}): local {k}x{k} branch\n'
                               'weights |gate * W| (zoom)')
            sm.meta.append(dict(kind='attnconv_local', point=list(point), feature_yx=list(fyx), kernel_size=k))
    return sm


@torch.no_grad()
def _explained(call, img, points):
    """Any other family: the operator's explanation of each query point, drawn as a heat map over the image."""
    op, hw = call.module, call.x.shape[-2:]
    family = A.family_of(op)
    sm = StageMap(family, call.stage, call.stride, call.block, call.name,
                  summary=f'{type(op).__name__}, feature map {hw[0]}x{hw[1]}')
    for point in points:
        fyx = A.feature_point(point, img.shape[:2], hw)
        out = A.explain(op, call.x, fyx)
        weights = out['weights'].detach()
        # a grid coarser than the map (pooled keys) covers it with larger cells
        cell = call.stride * -(-hw[0] // weights.shape[0])
        sm.panels.append(D.draw_heatmap(img, weights, cell, point))
        sm.captions.append(f'query ({point[0]}, {point[1]}): {out.get("caption", "attention")}')
        sm.meta.append(dict(kind=family, point=list(point), feature_yx=list(fyx)))
    return sm


#: built-in families with a drawing of their own; the others are drawn from their operators' explanations
_DRAWERS = dict(biformer=_biformer, stvit=_stvit, cloformer=_cloformer)


def attention_maps(backbone: torch.nn.Module, img: np.ndarray, x: torch.Tensor, points: Sequence[tuple[int, int]],
                   stages: Collection[int] | None = None, block: int = -1,
                   seed: int = 0) -> tuple[list[StageMap], dict[int, str]]:
    """``(maps, skipped)``: a :class:`StageMap` per drawn stage of ``backbone`` and ``{stage: reason}``.

    Args:
        backbone: in eval mode, holding mmsparse operators.
        img: (H, W, 3) BGR uint8, the image as the backbone sees it (already resized).
        x: (1, 3, H, W), ``img`` preprocessed.
        points: query pixels (x, y) on ``img``.
        stages: stages to draw (None: all).
        block: index of the attention block drawn in each stage (default: the last).
        seed: colours of the super tokens.

    Raises:
        ValueError: ``x`` and ``img`` differ in size, a point is outside ``img``, or a stage or block does
            not exist.
    """
    if x.shape[-2:] != img.shape[:2]:
        raise ValueError(f'x is {tuple(x.shape[-2:])} but img is {img.shape[:2]}: preprocess the drawn image')
    for px, py in points:
        if not (0 <= px < img.shape[1] and 0 <= py < img.shape[0]):
            raise ValueError(f'point ({px}, {py}) is outside the {img.shape[1]}x{img.shape[0]} image')
    calls = A.capture_operator_inputs(backbone, x)
    by_stage: dict[int, list[A.OperatorCall]] = {}
    for call in calls:
        by_stage.setdefault(call.stage, []).append(call)
    if stages is not None:
        unknown = sorted(set(stages) - set(by_stage))
        if unknown:
            raise ValueError(f'stages {unknown} have no attention operator; this backbone has {sorted(by_stage)}')
    maps, skipped = [], {}
    for stage in sorted(by_stage):
        if stages is not None and stage not in stages:
            continue
        call = _pick(by_stage[stage], block)
        reason = _drawable(call)
        if reason:
            skipped[stage] = reason
            continue
        family = A.family_of(call.module)
        if family in _DRAWERS:
            maps.append(_DRAWERS[family](call, img, points, seed))
        else:
            maps.append(_explained(call, img, points))
    return maps, skipped
