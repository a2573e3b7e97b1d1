"""The bad-network proxy of examples/flaky-network, for the tests."""

from __future__ import annotations

import importlib.util
from pathlib import Path

_PATH = Path(__file__).resolve().parent.parent / "examples" / "flaky-network" / "flaky_proxy.py"
_spec = importlib.util.spec_from_file_location("flaky_proxy", _PATH)
assert _spec is not None and _spec.loader is not None
_module = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_module)

FlakyProxy = _module.FlakyProxy

__all__ = ["FlakyProxy"]
