"""Keep the host's freed step buffers for reuse, when the step runs on CPU devices.

XLA:CPU allocates a step's temporaries with malloc at every execution. glibc serves blocks above its mmap
threshold (at most 32 MiB) with fresh mmaps and unmaps them on free, so every step page-faults its large
buffers in again: for the open_clip comparison's small CLIP (docs/scaling.md), the zeroed [49408, 256]
gradient of the token embedding alone took 40 ms of a 0.9 s step, and the whole step ran 14% faster with
mmap off. `mallopt(M_MMAP_MAX, 0)` keeps large blocks in the heap and `M_TRIM_THRESHOLD` keeps the freed
heap mapped, so the next step reuses the same pages; the process holds its peak host memory instead of
returning it between steps, which a training process reaches again at every step anyway.
"""

import ctypes
import ctypes.util
import functools

_M_TRIM_THRESHOLD, _M_MMAP_MAX = -1, -4  # glibc's mallopt parameters (malloc.h)


@functools.cache
def keep_freed_buffers() -> bool:
  """Once per process; True when glibc took the settings (False elsewhere: musl, macOS)."""
  name = ctypes.util.find_library("c")
  try:
    libc = ctypes.CDLL(name)
    mallopt = libc.mallopt
  except (OSError, AttributeError, TypeError):
    return False
  mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
  # The trim threshold is an int: 1 GiB below INT_MAX keeps any freed heap a step would reuse.
  return bool(mallopt(_M_MMAP_MAX, 0)) and bool(mallopt(_M_TRIM_THRESHOLD, 2**30))
