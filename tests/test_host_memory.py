"""On CPU the step's large buffers are served from the heap and reused, not mmapped fresh at every step."""

import ctypes
import ctypes.util
import sys

import pytest

from vlm_jax.core import host_memory


class _Mallinfo2(ctypes.Structure):
  _fields_ = [
    (name, ctypes.c_size_t)
    for name in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks")
    + ("fordblks", "keepcost")
  ]


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc")
def test_a_64_mib_buffer_comes_from_the_heap_and_its_pages_stay_for_the_next_step():
  libc = ctypes.CDLL(ctypes.util.find_library("c"))
  libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, (ctypes.c_size_t,)
  libc.free.argtypes = (ctypes.c_void_p,)
  libc.mallinfo2.restype = _Mallinfo2
  assert host_memory.keep_freed_buffers()
  size = 64 * 2**20  # above glibc's largest mmap threshold (32 MiB): mmapped unless mmap is off
  mmapped_before = libc.mallinfo2().hblkhd
  block = libc.malloc(size)
  assert libc.mallinfo2().hblkhd == mmapped_before  # not a fresh mapping
  libc.free(block)
  assert libc.mallinfo2().arena >= size  # freed, but still mapped in the heap for reuse
