"""FLOPs of a train step and the peak they are compared against: MFU and HFU.

* Model FLOPs (MFU's numerator): 2*m*n*k for every matmul and convolution the loss's forward and backward
  pass need, counted from the traced step of the model with remat off. For a transformer that is
  6 * matmul parameters * tokens plus attention's QK^T and AV terms; a locked tower counts its forward only
  (it has no backward), recomputation under remat never counts, elementwise work never counts.
* Hardware FLOPs (HFU's numerator): XLA's count of the compiled step, which includes remat's recompute,
  elementwise ops and the optimizer.
* Peak: per chip from `PEAK_FLOPS` by `device_kind` for the compute dtype; on CPUs (and chips not in the
  table) a matmul large enough to saturate the device, timed on a local device.
"""

import dataclasses
import functools
import math
import time

import flax.linen as nn
import jax
from jax._src.interpreters import partial_eval  # dce_jaxpr has no public name in this JAX
import jax.extend.core as jax_core
import jax.numpy as jnp

from vlm_jax import models
from vlm_jax.core import sharding

# Dense peak FLOP/s per chip (per device as JAX lists them) as (16-bit, float32). float32 matmuls at JAX's
# default precision run as TF32 on NVIDIA GPUs and as one bfloat16 pass on TPUs. First match wins.
PEAK_FLOPS = (
  ("H100 PCIe", (756e12, 378e12)),
  ("H100", (989e12, 495e12)),  # SXM
  ("H200", (989e12, 495e12)),
  ("H20", (148e12, 74e12)),
  ("A100", (312e12, 156e12)),
  ("L4", (121e12, 60e12)),
  ("TPU v4", (275e12, 275e12)),
  ("TPU v5 lite", (197e12, 197e12)),  # v5e
  ("TPU v5e", (197e12, 197e12)),
  ("TPU v5", (459e12, 459e12)),  # v5p
  ("TPU v6 lite", (918e12, 918e12)),  # v6e (Trillium)
  ("TPU v6e", (918e12, 918e12)),
)


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


def matmul_flops(jaxpr) -> float:
  """2*m*n*k summed over the dot_generals and convolutions of a jaxpr, through scans (times their length),
  shard_maps (times their shards), conds (the costliest branch) and every other nested jaxpr (once)."""
  total = 0.0
  for eqn in jaxpr.eqns:
    name = eqn.primitive.name
    if name == "dot_general":
      lhs, rhs = (v.aval for v in eqn.invars)
      (lhs_contract, _), (lhs_batch, _) = eqn.params["dimension_numbers"]
      contract = math.prod(lhs.shape[d] for d in lhs_contract)
      batch = math.prod(lhs.shape[d] for d in lhs_batch)
      total += 2.0 * lhs.size * rhs.size / (contract * batch)  # 2 * batch * m * n * k
    elif name == "conv_general_dilated":
      out, kernel = eqn.outvars[0].aval, eqn.invars[1].aval
      out_features = kernel.shape[eqn.params["dimension_numbers"].rhs_spec[0]]
      total += 2.0 * out.size * kernel.size / out_features
    subs = [matmul_flops(sub) for sub in jax_core.jaxprs_in_params(eqn.params)]
    if not subs:
      continue
    if name == "cond":
      total += max(subs)
    elif name == "scan":
      total += eqn.params["length"] * sum(subs)
    elif name == "shard_map":
      mesh = eqn.params["mesh"]
      manual = eqn.params.get("newly_manual_axes") or eqn.params.get("manual_axes") or mesh.shape
      total += math.prod(mesh.shape[a] for a in manual) * sum(subs)
    else:
      total += sum(subs)
  return total


def model_flops(exp) -> float:
  """Model FLOPs of one train step of Experiment `exp` over the global batch (see the module docstring)."""
  config = exp.config.model.copy_and_resolve_references()
  with config.unlocked():
    config.remat = "none"
  model = models.build(config, exp.tokenizer.vocab_size, exp.platform)

  def loss_and_grads(params, batch, key):
    loss = lambda p: exp.loss(p, batch, key, model=model)[0]
    return jax.value_and_grad(loss)(params)

  with jax.set_mesh(exp.mesh), nn.logical_axis_rules(sharding.RULES):
    jaxpr = jax.make_jaxpr(loss_and_grads)(
      exp.abstract_params,
      exp.abstract_batch(exp.batch_size),
      jax.ShapeDtypeStruct((2,), jnp.uint32),
    )
  # Dead code out first: a model may compute outputs no objective of this run reads (jit prunes them too).
  live, _ = partial_eval.dce_jaxpr(jaxpr.jaxpr, [True] * len(jaxpr.jaxpr.outvars))
  return matmul_flops(live)


def peak_flops(device_kind: str, dtype) -> tuple[float, str]:
  """(peak FLOP/s of one device for matmuls in `dtype`, where the figure comes from)."""
  sixteen_bit = jnp.dtype(dtype).itemsize == 2
  for kind, (half, single) in PEAK_FLOPS:
    if kind.lower() in device_kind.lower():
      return (half if sixteen_bit else single), f"table: {kind}"
  return measure_matmul_peak(jnp.dtype(dtype).name), "measured: a 2048^2 matmul on a local device"


@dataclasses.dataclass(frozen=True)
class StepFlops:
  """What one train step costs and what the devices could do: MFU and HFU for a measured step time."""

  model: float  # model FLOPs of a step, all devices together
  hardware: (
    float | None
  )  # XLA's FLOPs of the compiled step, per device (None: the backend gives none)
  peak: float  # per device, for the compute dtype
  peak_source: str
  devices: int

  def utilisation(self, step_time: float) -> dict:
    out = {"perf/mfu": self.model / self.devices / step_time / self.peak}
    if self.hardware:
      out["perf/hfu"] = self.hardware / step_time / self.peak
    return out


def step_flops(exp, compiled) -> StepFlops:
  """The StepFlops of Experiment `exp`'s compiled train step (traces the loss once more, without remat)."""
  peak, source = peak_flops(exp.mesh.devices.flat[0].device_kind, exp.model.dtype)
  return StepFlops(model_flops(exp), compiled_flops(compiled), peak, source, exp.mesh.devices.size)


@functools.cache
def measure_matmul_peak(dtype: str = "float32", size: int = 2048, repeats: int = 5) -> float:
  """The best FLOP/s of a square matmul on this process's first device. 2048^2 saturates a CPU's cores
  (1024^2 reached about 80% on 2 cores); on an accelerator use the table: a single matmul there is
  latency-bound and far below peak."""
  device = jax.local_devices()[0]
  a = jax.device_put(jnp.ones((size, size), dtype), device)
  matmul = jax.jit(lambda x: x @ x)
  matmul(a).block_until_ready()
  best = float("inf")
  for _ in range(repeats):
    start = time.perf_counter()
    matmul(a).block_until_ready()
    best = min(best, time.perf_counter() - start)
  return 2 * size**3 / best
