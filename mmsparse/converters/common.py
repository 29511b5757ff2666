"""What the family key maps share: the errors and :func:`apply_key_map`, the rule-table renamer all three use."""
from __future__ import annotations

import re
from collections import OrderedDict
from typing import Any, Iterable, Mapping, Sequence, Union

#: a regex pattern, compiled or not
Pattern = Union[str, 're.Pattern[str]']
#: ``(pattern, target)`` or ``(pattern, target, transform)``; see :func:`apply_key_map`
Rule = Sequence[Any]

__all__ = ['UnmappedKeysError', 'ForeignStateDictError', 'apply_key_map']


def _shown(keys: Iterable[str], limit: int = 20) -> str:
    keys = list(keys)
    return ', '.join(keys[:limit]) + (' ...' if len(keys) > limit else '')


class UnmappedKeysError(KeyError):
    """Raised when a state dict holds keys a converter does not know how to map."""

    def __init__(self, family: str, keys: Iterable[str]) -> None:
        self.family = family
        self.keys = list(keys)
        super().__init__(f'{family}: {len(self.keys)} key(s) cannot be mapped to mmsparse: {_shown(self.keys)}')

    def __str__(self) -> str:
        return self.args[0]


class ForeignStateDictError(UnmappedKeysError):
    """Raised when a state dict holds none of the family's keys (an empty one, or another model's weights)."""

    # why: converting it would give an empty state dict, i.e. load nothing

    def __init__(self, family: str, expected: str, keys: Iterable[str]) -> None:
        self.family = family
        self.keys = list(keys)
        held = (f'it holds {len(self.keys)} other key(s): {_shown(self.keys, 5)}' if self.keys else 'it is empty')
        KeyError.__init__(self, f'{family}: the state dict holds none of the keys of the authors\' {family} '
                          f'checkpoints ({held}); expected {expected}. Is this checkpoint of another model?')


def _compiled(pattern: Pattern) -> re.Pattern[str]:
    return re.compile(pattern) if isinstance(pattern, str) else pattern


def apply_key_map(state_dict: Mapping[str, Any], rules: Iterable[Rule], family: str, drop: Pattern | None = None,
                  strict: bool = True, expected: str | None = None) -> OrderedDict[str, Any]:
    """Rename the keys of ``state_dict`` with a rule table; returns a new ``OrderedDict``.

    Args:
        rules: ``(pattern, target[, transform])``, tried in order; the first ``pattern`` matching the whole key
            applies. ``target``: a ``Match.expand`` template, a callable ``match -> key``, or ``None`` (a family
            key that is dropped after ``transform``). ``transform(key, value) -> value`` reshapes or checks.
        drop: matched at the start of a key: dropped before the rules, not counted as the family's.
        strict: unmatched keys raise :class:`UnmappedKeysError`; else they pass through (layout upgrades).
        expected: what the family's keys look like; when given, a state dict where no key matches a rule (an
            empty one included) raises :class:`ForeignStateDictError` with it.
    """
    drop_re = _compiled(drop) if drop is not None else None
    compiled = [(_compiled(rule[0]), ) + tuple(rule[1:]) for rule in rules]
    out: OrderedDict[str, Any] = OrderedDict()
    unknown: list[str] = []
    matched = 0
    for key, value in state_dict.items():
        if drop_re is not None and drop_re.match(key):
            continue
        for pattern, target, *transform in compiled:
            m = pattern.fullmatch(key)
            if m:
                break
        else:
            if strict:
                unknown.append(key)
            else:
                out[key] = value
            continue
        matched += 1
        if transform:
            value = transform[0](key, value)
        if target is not None:
            out[target(m) if callable(target) else m.expand(target)] = value
    if expected is not None and not matched:
        raise ForeignStateDictError(family, expected, state_dict)
    if unknown:
        raise UnmappedKeysError(family, unknown)
    return out
