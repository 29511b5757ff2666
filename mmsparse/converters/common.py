"""What the family key maps share: the errors and :func:`apply_key_map`, the rule-table renamer all three use."""
import re
from collections import OrderedDict

__all__ = ['UnmappedKeysError', 'ForeignStateDictError', 'apply_key_map']


def _shown(keys, limit=20):
    keys = list(keys)
    return ', '.join(keys[:limit]) + (' ...' if len(keys) > limit else '')


class UnmappedKeysError(KeyError):
    """Raised when a state dict holds keys a converter does not know how to map."""

    def __init__(self, family, keys):
        self.family = family
        self.keys = list(keys)
        super().__init__(f'{family}: {len(self.keys)} key(s) cannot be mapped to mmsparse: {_shown(self.keys)}')

    def __str__(self):
        return self.args[0]


class ForeignStateDictError(UnmappedKeysError):
    """Raised when a state dict holds none of the family's keys (an empty one, or another model's weights):
    converting it would give an empty state dict, i.e. load nothing."""

    def __init__(self, family, expected, keys):
        self.family = family
        self.keys = list(keys)
        held = (f'it holds {len(self.keys)} other key(s): {_shown(self.keys, 5)}' if self.keys else 'it is empty')
        KeyError.__init__(self, f'{family}: the state dict holds none of the keys of the authors\' {family} '
                          f'checkpoints ({held}); expected {expected}. Is this checkpoint of another model?')


def _compiled(pattern):
    return re.compile(pattern) if isinstance(pattern, str) else pattern


def apply_key_map(state_dict, rules, family, drop=None, strict=True, expected=None):
    """Rename the keys of ``state_dict`` with a rule table; returns a new ``OrderedDict``.

    ``rules``: ``(pattern, target)`` or ``(pattern, target, transform)`` tuples, tried in order; the first whose
    ``pattern`` (a regex, compiled or not) matches the whole key applies. ``target`` is a ``Match.expand``
    template, a callable ``match -> new key``, or ``None``: a key of the family that is dropped (after
    ``transform``, which may check it). ``transform(key, value) -> value`` reshapes or checks the tensor.

    ``drop``: a regex matched at the start of a key: keys that are dropped before the rules (the
    classification head) and do not count as the family's. ``strict``: keys no rule matches raise
    :class:`UnmappedKeysError`; otherwise they pass through unchanged (the upgrades of older mmsparse layouts,
    where current keys are kept). ``expected``: what the family's keys look like; when given, a state dict in
    which no key matches a rule (an empty one included) raises :class:`ForeignStateDictError` with it.
    """
    drop = _compiled(drop) if drop is not None else None
    rules = [(_compiled(rule[0]), ) + tuple(rule[1:]) for rule in rules]
    out, unknown, matched = OrderedDict(), [], 0
    for key, value in state_dict.items():
        if drop is not None and drop.match(key):
            continue
        for pattern, target, *transform in rules:
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
