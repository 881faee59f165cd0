"""FLOPs of a train step and the peak they are compared against: MFU and HFU.

* Model FLOPs (MFU's numerator): 2*m*n*k for every matmul and convolution the loss's forward and backward
  pass need, counted from the traced step of the model with remat off. For a transformer that is
  6 * matmul parameters * tokens plus attention's QK^T and AV terms; a locked tower counts its forward only
  (it has no backward), recomputation under remat never counts, elementwise work never counts.
* Hardware FLOPs (HFU's numerator): XLA's count of the compiled step, which includes remat's recompute,
  elementwise ops and the optimizer.
* Peak: per chip from the chip table `CHIPS` by `device_kind` for the compute dtype; on CPUs (and chips not in the
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

GIB = 2**30


@dataclasses.dataclass(frozen=True)
class Chip:
  """One accelerator chip's published figures: dense peak FLOP/s for 16-bit and float32 matmuls (float32 at
  JAX's default precision runs as TF32 on NVIDIA GPUs and as one bfloat16 pass on TPUs; None: not
  published), HBM capacity in bytes and HBM bandwidth in bytes/s, and where they come from."""

  kinds: tuple  # substrings of JAX's `device_kind` that name this chip
  peak_16bit: float | None
  peak_32bit: float | None
  hbm_bytes: float
  hbm_bandwidth: float | None
  source: str


_GCP = "cloud.google.com/tpu/docs/"
# First match wins (so "TPU v5 lite", v5e, comes before "TPU v5", v5p). A TPU v2/v3 (and a v4 topology as
# libtpu describes it) lists one device per TensorCore, each with its share of the chip.
CHIPS = (
  Chip(("H100 PCIe",), 756e12, 378e12, 80e9, 2.0e12, "NVIDIA H100 datasheet (PCIe)"),
  Chip(("H100",), 989e12, 495e12, 80e9, 3.35e12, "NVIDIA H100 datasheet (SXM)"),
  Chip(("H200",), 989e12, 495e12, 141e9, 4.8e12, "NVIDIA H200 datasheet (SXM)"),
  Chip(("H20",), 148e12, 74e12, 96e9, 4.0e12, "NVIDIA H20 datasheet"),
  Chip(("A100",), 312e12, 156e12, 80e9, 2.039e12, "NVIDIA A100 datasheet (80GB SXM)"),
  Chip(("L4",), 121e12, 60e12, 24e9, 300e9, "NVIDIA L4 datasheet"),
  Chip(("TPU v2",), 45e12, 45e12, 16 * GIB, 600e9, _GCP + "system-architecture-tpu-vm"),
  Chip(("TPU v3",), 123e12, 123e12, 32 * GIB, 900e9, _GCP + "system-architecture-tpu-vm"),
  Chip(("TPU v4 lite",), None, None, 8 * GIB, None, "inference chip: capacity only"),
  Chip(("TPU v4",), 275e12, 275e12, 32 * GIB, 1200e9, _GCP + "v4"),
  Chip(("TPU v5 lite", "TPU v5e"), 197e12, 197e12, 16 * GIB, 819e9, _GCP + "v5e"),
  Chip(("TPU v5p", "TPU v5"), 459e12, 459e12, 95 * GIB, 2765e9, _GCP + "v5p"),
  Chip(("TPU v6 lite", "TPU v6e"), 918e12, 918e12, 32 * GIB, 1638e9, _GCP + "v6e"),
)


def chip(device_kind: str) -> Chip | None:
  """The chip table's entry for a JAX `device_kind` (None for CPUs and chips not in it)."""
  for entry in CHIPS:
    if any(kind.lower() in device_kind.lower() for kind in entry.kinds):
      return entry
  return None


def devices_per_chip(devices) -> int:
  """How many of `devices` share the first one's chip (its TensorCores listed apart): 1 on most chips."""
  coords = getattr(devices[0], "coords", None)
  if coords is None:
    return 1
  return sum(1 for d in devices if tuple(getattr(d, "coords", ())) == tuple(coords))


def cost_analysis(compiled) -> dict:
  """XLA's cost analysis of one execution of a compiled step, per device ({} if the backend gives none)."""
  try:
    analysis = compiled.cost_analysis()
  except Exception:  # pylint: disable=broad-except  (some backends do not implement it)
    return {}
  if isinstance(analysis, (list, tuple)):
    analysis = analysis[0] if analysis else {}
  return dict(analysis or {})


def compiled_flops(compiled) -> float | None:
  """FLOPs of one execution of a compiled step, per device, from XLA's cost analysis (None if unknown)."""
  flops = cost_analysis(compiled).get("flops")
  return float(flops) if flops and flops > 0 else None


def matmul_flops(jaxpr, scan_trips: bool = True) -> float:
  """2*m*n*k summed over the dot_generals and convolutions of a jaxpr, through scans (times their length;
  once with scan_trips=False, as XLA's cost analysis counts a loop's body), shard_maps (times their
  shards), conds (the costliest branch) and every other nested jaxpr (once)."""
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
    subs = [matmul_flops(sub, scan_trips) for sub in jax_core.jaxprs_in_params(eqn.params)]
    if not subs:
      continue
    if name == "cond":
      total += max(subs)
    elif name == "scan":
      total += (eqn.params["length"] if scan_trips else 1) * sum(subs)
    elif name == "shard_map":
      mesh = eqn.params["mesh"]
      manual = eqn.params.get("newly_manual_axes") or eqn.params.get("manual_axes") or mesh.shape
      total += math.prod(mesh.shape[a] for a in manual) * sum(subs)
    else:
      total += sum(subs)
  return total


def _step_jaxpr(exp, model):
  """The live jaxpr of one train step's loss and gradients over the global batch, with `model`."""

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
  return live


def model_flops(exp) -> float:
  """Model FLOPs of one train step of Experiment `exp` over the global batch (see the module docstring)."""
  config = exp.config.model.copy_and_resolve_references()
  with config.unlocked():
    config.remat = "none"
  return matmul_flops(
    _step_jaxpr(exp, models.build(config, exp.tokenizer.vocab_size, exp.platform))
  )


def executed_matmul_flops(exp) -> tuple[float, float]:
  """(matmul FLOPs the step as configured executes, remat's recomputation included; the same counting each
  scanned loop's body once, as XLA's cost analysis does), over the global batch."""
  live = _step_jaxpr(exp, exp.model)
  return matmul_flops(live), matmul_flops(live, scan_trips=False)


def peak_flops(device_kind: str, dtype) -> tuple[float, str]:
  """(peak FLOP/s of one device for matmuls in `dtype`, where the figure comes from)."""
  entry = chip(device_kind)
  peak = entry and (entry.peak_16bit if jnp.dtype(dtype).itemsize == 2 else entry.peak_32bit)
  if peak:
    return peak, f"table: {entry.kinds[0]}"
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
