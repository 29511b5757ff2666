"""Is a converted state dict a whole backbone? The key check behind ``tools/model_converters/official2mmsparse.py``.

The converted keys are compared, the way loading compares them, with each published variant of the family's
backbone (built on the meta device: no memory), so a truncated or foreign file fails at conversion time.
"""
# why: a key map renames what it is given; it cannot tell a complete checkpoint from a fragment
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from .common import _shown

__all__ = ['KeyReport', 'match_variant']


class KeyReport:
    """Missing, unexpected and mis-shaped keys of a state dict against one variant of a backbone."""

    def __init__(self, arch: str, missing: list[str], unexpected: list[str], mismatched: list[str]) -> None:
        self.arch = arch
        self.missing = missing
        self.unexpected = unexpected
        self.mismatched = mismatched

    @property
    def errors(self) -> int:
        """How many keys are wrong in all."""
        return len(self.missing) + len(self.unexpected) + len(self.mismatched)

    def describe(self) -> str:
        """The wrong keys, one clause per kind (empty when none)."""
        parts = [f'{len(keys)} {title} key(s): {_shown(keys, 8)}'
                 for title, keys in (('missing', self.missing), ('unexpected', self.unexpected),
                                     ('shape-mismatched', self.mismatched)) if keys]
        return '; '.join(parts)


def _variant_report(backbone_cls: Any, kwargs: dict, shapes: Mapping[str, tuple]) -> KeyReport:
    with torch.device('meta'):
        model = backbone_cls(**kwargs)
    arch = kwargs['arch'] if isinstance(kwargs.get('arch'), str) else 'the given backbone arguments'
    own = {k: tuple(v.shape) for k, v in model.state_dict().items() if not k.endswith('num_batches_tracked')}
    dense_only = set(model.dense_only_keys())
    missing = [k for k in own if k not in shapes and k not in dense_only]
    unexpected = [k for k in shapes if k not in own and not k.endswith('num_batches_tracked')]
    mismatched = [f'{k} {shapes[k]} vs {own[k]}' for k in shapes if k in own and shapes[k] != own[k]]
    return KeyReport(arch, missing, unexpected, mismatched)


def match_variant(family: str, backbone_state_dict: Mapping[str, torch.Tensor],
                  backbone_kwargs: dict | None = None) -> str:
    """The ``arch`` of ``family`` whose backbone the converted keys fill exactly (output norms may be absent).

    Raises ``ValueError`` naming the missing, unexpected and mis-shaped keys against the closest candidate.

    Args:
        backbone_kwargs: check against the backbone these build (a custom ``arch``), not the published variants.
    """
    from mmsparse.families import get_family
    backbone_cls: Any = get_family(family).backbone  # a SparseBackbone subclass: its own arch_zoo
    shapes = {k: tuple(v.shape) for k, v in backbone_state_dict.items()}
    candidates = [backbone_kwargs] if backbone_kwargs is not None else [dict(arch=a) for a in backbone_cls.arch_zoo]
    reports = [_variant_report(backbone_cls, kwargs, shapes) for kwargs in candidates]
    best = min(reports, key=lambda r: r.errors)
    if best.errors:
        against = (f'the closest published variant ({best.arch!r})' if backbone_kwargs is None else
                   f'{backbone_cls.__name__}(**{backbone_kwargs})')
        raise ValueError(f'the converted weights are not a whole {family} backbone: against {against} there are '
                         f'{best.describe()}. Is the source a complete official {family} checkpoint? (a model of '
                         'another size: pass its --backbone-args)')
    return best.arch
