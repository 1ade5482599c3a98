"""Process-wide tuning the ``weightvault`` command applies at start (not on library import).

Measured on the 2-core build machine, restoring MiniLM (91 MB):

- glibc returns freed multi-megabyte buffers to the kernel (mmap/trim
  thresholds) and the next chunk faults them in again; on a VM each fault is
  dear. Keeping up to 128 MiB of freed heap raised restore from ~350 to
  ~430 MB/s and fsplit encoding from 1.0 to 2.7 GB/s per core. Peak RSS stays
  bounded: the in-flight window is at most ``2 * workers`` chunks.
- numpy's OpenBLAS starts one spinning thread per core although weightvault
  never calls BLAS: 7% of a restore's CPU samples (perf). One thread is enough.
- The cyclic garbage collector ran 32 young collections (and 3 older ones)
  during one snapshot of MiniLM, 52 for its fine-tune and 21 during a restore,
  taking 8-13 ms and 4-5 ms (timed with ``gc.callbacks``) to free about 400
  objects in all: mostly walks over what imports create. A young-generation threshold of
  GC_GEN0 (CPython's default is 700) leaves a snapshot or restore of such a
  model with no collection at all; a long command (a distillation run, a
  verify of a large store) still collects, each pass over at most that many
  young objects.
"""

from __future__ import annotations

import gc
import os

M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
GC_GEN0 = 50_000


def tune() -> None:
    """Apply the settings above; malloc's and OpenBLAS's are no-ops where they do not exist
    (non-glibc, numpy already loaded)."""
    gen0, gen1, gen2 = gc.get_threshold()
    if gen0:  # 0: someone turned collection off; leave that alone
        gc.set_threshold(max(gen0, GC_GEN0), gen1, gen2)
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(M_MMAP_THRESHOLD, 64 << 20)
        libc.mallopt(M_TRIM_THRESHOLD, 128 << 20)
    except (OSError, AttributeError):
        pass
