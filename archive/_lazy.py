"""numpy, imported on first use.

Every command imports the codecs, but with the C transforms built
(archive/_native.c) snapshot and restore of F32/BF16 weights never touch
numpy, whose import is 0.12 s of the 0.22 s it takes to import the store on
the build machine (``python -X importtime``). ``np.<name>`` imports it then.
"""

from __future__ import annotations

import importlib


class _LazyModule:
    def __init__(self, name: str):
        self._name = name
        self._mod = None

    def __getattr__(self, attr):
        mod = self._mod
        if mod is None:
            mod = self._mod = importlib.import_module(self._name)
        return getattr(mod, attr)


numpy = _LazyModule("numpy")
