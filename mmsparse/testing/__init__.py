"""Helpers for tests against the authors' code (not imported by ``import mmsparse``)."""
from __future__ import annotations

from .official import OFFICIAL_CLASSES, model_from_official

__all__ = ['OFFICIAL_CLASSES', 'model_from_official']
