"""FLOP counts of compiled steps and the matmul peak they are compared against (for MFU)."""

import functools
import time

import jax
import jax.numpy as jnp


def compiled_flops(compiled) -> float | None:
  """FLOPs of one execution of a compiled step, per device, from XLA's cost analysis (None if unknown)."""
  try:
    analysis = compiled.cost_analysis()
  except Exception:  # pylint: disable=broad-except  (some backends do not implement it)
    return None
  if isinstance(analysis, (list, tuple)):
    analysis = analysis[0] if analysis else {}
  flops = (analysis or {}).get("flops")
  return float(flops) if flops and flops > 0 else None


@functools.cache
def measure_matmul_peak(size: int = 1024, dtype: str = "float32", repeats: int = 5) -> float:
  """The best FLOP/s of a square matmul on the first device, measured on the spot."""
  device = jax.devices()[0]
  a = jax.device_put(jnp.ones((size, size), dtype), device)
  matmul = jax.jit(lambda x: x @ x)
  matmul(a).block_until_ready()
  best = float("inf")
  for _ in range(repeats):
    start = time.perf_counter()
    matmul(a).block_until_ready()
    best = min(best, time.perf_counter() - start)
  return 2 * size**3 / best
