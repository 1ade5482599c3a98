"""The optional C transforms (archive/_native.c), or None.

The C module computes exactly the bytes of the numpy reference code in
archive/floatsplit.py, archive/delta.py, archive/cast.py and archive/codecs.py,
in one pass and without the GIL (tests/test_native.py compares them).
``WEIGHTVAULT_NO_NATIVE=1`` forces the numpy path (tests compare the two).
"""

from __future__ import annotations

import os

NONE, XOR, SUB = 0, 1, 2  # planes_split / planes_join modes

native = None
if not os.environ.get("WEIGHTVAULT_NO_NATIVE"):
    try:
        from weightvault.archive import _native as native  # type: ignore[no-redef]
    except ImportError:  # built without a C compiler: the numpy paths serve
        native = None
