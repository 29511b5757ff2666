from __future__ import annotations

__version__: str = '0.1.0'
