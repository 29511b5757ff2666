"""Scoped silence for one third-party warning that every mmsparse command would otherwise print."""
from __future__ import annotations

import warnings
from collections.abc import Iterator
from contextlib import contextmanager

__all__ = ['quiet_pkg_resources']


@contextmanager
def quiet_pkg_resources() -> Iterator[None]:
    """Hide setuptools' "pkg_resources is deprecated" warning inside the block, and nothing else.

    mmengine 0.10 imports ``pkg_resources`` when it is imported and re-imports it (``importlib.reload``) each time
    a config names a package (``mmdet::``, ``mmsparse::``, ``custom_imports``): 2-4 copies of the warning per
    command, about code the user cannot change. The filter lives only inside the block.
    """
    with warnings.catch_warnings():
        warnings.filterwarnings('ignore', message='pkg_resources is deprecated', category=UserWarning)
        yield
