"""What the family key maps share: the error for unknown keys and the rule-table renamer."""
import re

__all__ = ['UnmappedKeysError', 'rename_by_rules', 'apply_key_map']


class UnmappedKeysError(KeyError):
    """Raised when a state dict holds keys a converter does not know how to map."""

    def __init__(self, family, keys):
        self.family = family
        self.keys = list(keys)
        shown = ', '.join(self.keys[:20]) + (' ...' if len(self.keys) > 20 else '')
        super().__init__(f'{family}: {len(self.keys)} key(s) cannot be mapped to mmsparse: {shown}')

    def __str__(self):
        return self.args[0]


def rename_by_rules(key, rules):
    """Apply the first ``(compiled pattern, replacement)`` of ``rules`` that matches ``key``; None if none does.

    A replacement is a template for ``Match.expand`` or a callable ``match -> new key``.
    """
    for pattern, repl in rules:
        m = pattern.match(key)
        if m:
            return repl(m) if callable(repl) else m.expand(repl)
    return None


def apply_key_map(state_dict, rules, family, drop=None, strict=True):
    """Rename every key of ``state_dict`` with ``rules``; keys matching ``drop`` are dropped.

    ``strict``: raise :class:`UnmappedKeysError` for keys no rule knows; otherwise keep them unchanged
    (used by the upgrades of older mmsparse layouts, where current keys pass through).
    """
    from collections import OrderedDict
    drop = re.compile(drop) if isinstance(drop, str) else drop
    out, unknown = OrderedDict(), []
    for key, value in state_dict.items():
        if drop is not None and drop.match(key):
            continue
        new = rename_by_rules(key, rules)
        if new is None:
            if strict:
                unknown.append(key)
                continue
            new = key
        out[new] = value
    if unknown:
        raise UnmappedKeysError(family, unknown)
    return out
