"""Keeps freed host memory in the process, so XLA:CPU does not page-fault its buffers in anew at every step.

XLA:CPU allocates one temporary arena per execution of a compiled program (1.3 GB for the
GPT-2 benchmark's training step: 6 layers, 384 wide, batch 16 x 256) with the C library's
malloc. glibc serves an allocation that large with a fresh mmap and returns it with munmap
when the step ends, so every step page-faults the whole arena back in: 324,000 minor faults
and 0.46 s of kernel time per step there, against no faults in PyTorch, whose allocations
are reused. (glibc's threshold for mmap can be raised to 32 MB at most, and a thread with an
arena of its own maps larger requests regardless; XLA allocates from its worker threads.)

`keep_freed_memory` asks glibc (mallopt) to serve every thread from the one main heap, never
to mmap, and to return freed memory to the system only past 2 GiB at the top of the heap; the
next step then reuses the same pages. The cost: the process keeps its peak heap, as PyTorch's
and the JAX GPU allocators do. `import research` calls it once, before JAX starts its threads;
set RESEARCH_SYSTEM_MALLOC=1 to keep the C library's defaults. Elsewhere than glibc it does
nothing.

  python -m experiments.bench.gpt2 ...   # the training step's ratio with it; RESEARCH_SYSTEM_MALLOC=1 without
"""

import ctypes
import ctypes.util
import os
import sys

# mallopt parameters (glibc's malloc.h).
_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4
_M_ARENA_MAX = -8
_TRIM_THRESHOLD = 2**31 - 1  # bytes free at the top of the heap before any is returned

ENV_OPT_OUT = "RESEARCH_SYSTEM_MALLOC"

_applied: bool | None = None


def keep_freed_memory() -> bool:
  """Configures glibc's malloc as the module doc says; True when it did (once per process)."""
  global _applied
  if _applied is not None:
    return _applied
  _applied = False
  if os.environ.get(ENV_OPT_OUT, "") not in ("", "0") or not sys.platform.startswith("linux"):
    return False
  try:
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    mallopt = libc.mallopt
  except (OSError, AttributeError):  # not glibc (e.g. musl has no mallopt)
    return False
  mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
  _applied = all(mallopt(param, value) == 1 for param, value in
                 ((_M_ARENA_MAX, 1), (_M_MMAP_MAX, 0), (_M_TRIM_THRESHOLD, _TRIM_THRESHOLD)))
  return _applied
