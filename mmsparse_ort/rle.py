"""COCO run-length encoding of binary masks in numpy: the compressed string of pycocotools' ``mask.encode``."""
from __future__ import annotations

from typing import Any

import numpy as np


def run_lengths(mask: np.ndarray) -> list[int]:
    """Lengths of the alternating runs of ``mask`` read column by column, starting with a run of zeros.

    Shapes:
        mask: ``[H, W]``, any dtype (non-zero is foreground).
    """
    flat = (np.asarray(mask) != 0).flatten(order='F').astype(np.int8)
    if flat.size == 0:
        return []
    changes = np.flatnonzero(np.diff(flat)) + 1
    bounds = np.concatenate([[0], changes, [flat.size]])
    lengths = np.diff(bounds).tolist()
    return [0] + lengths if flat[0] else lengths


def counts_string(lengths: list[int]) -> str:
    """pycocotools' compressed form of run lengths: each (delta-coded from the third on) as 5-bit groups + 48."""
    chars = []
    for i, value in enumerate(lengths):
        x = value - lengths[i - 2] if i > 2 else value
        more = True
        while more:
            group = x & 0x1f
            x >>= 5  # arithmetic shift: negative deltas end at -1
            more = x != -1 if group & 0x10 else x != 0
            chars.append(chr((group | 0x20 if more else group) + 48))
    return ''.join(chars)


def encode_rle(mask: np.ndarray) -> dict[str, Any]:
    """``{'size': [H, W], 'counts': str}``, as mmdet's results hold pycocotools' ``encode`` of ``mask``.

    Shapes:
        mask: ``[H, W]``.
    """
    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise ValueError(f'encode_rle: mask must be [H, W], got shape {list(mask.shape)}')
    return dict(size=[int(mask.shape[0]), int(mask.shape[1])], counts=counts_string(run_lengths(mask)))
