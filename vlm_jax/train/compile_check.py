"""`python -m vlm_jax.main --mode=compile [--topology=v5e:16x16]`: lower and compile the train step for the
configured mesh without training (or reading a checkpoint), and report its memory and FLOPs, so that a sweep
fails fast on a config that does not compile or fit before a pod is paid for. With `--topology`, the mesh is
made of a TPU topology's devices as libtpu describes them on any host (no TPU needed): XLA's TPU compiler
then reports the memory of one chip.

The state and batch are abstract (shapes, dtypes and shardings only); one example is preprocessed to get
the batch's shapes. Memory is XLA's per-device estimate of the compiled step: arguments (state + batch),
outputs, temporaries and generated code; when the device reports its capacity, an estimate above it is
an error.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp

from vlm_jax.assembly import flops as flops_lib
from vlm_jax.core import sharding
from vlm_jax.errors import ConfigError

GIB = 2**30
# HBM per TPU chip (GiB), keyed by `device_kind`. v2/v3 (and v4 without megacore, as AOT topologies describe
# it) expose one device per TensorCore, which then has its share of the chip.
TPU_HBM_GIB = {
  "TPU v2": 16,
  "TPU v3": 32,
  "TPU v4": 32,
  "TPU v4 lite": 8,
  "TPU v5 lite": 16,
  "TPU v5": 95,
  "TPU v5p": 95,
  "TPU v6 lite": 32,
  "TPU v6e": 32,
}


def _mib(n) -> str:
  return f"{n / 2**20:,.1f} MiB"


def device_capacity(devices) -> int | None:
  """Bytes of memory one device of `devices` has: the runtime's figure for local devices, else the TPU table."""
  device = devices[0]
  try:
    stats = device.memory_stats() or {}
    if stats.get("bytes_limit"):
      return int(stats["bytes_limit"])
  except Exception:  # pylint: disable=broad-except  (topology devices hold no data and have no stats)
    pass
  if device.device_kind not in TPU_HBM_GIB:
    return None
  cores_per_chip = sum(1 for d in devices if tuple(d.coords) == tuple(device.coords))
  return TPU_HBM_GIB[device.device_kind] * GIB // cores_per_chip


def objectives_temp_bytes(exp, abstract_params, abstract_batch) -> int | None:
  """Temporary bytes per device of the objectives alone: their losses and the gradients w.r.t. the model's
  outputs, compiled apart from the model. The whole step's temporaries are mostly activations, whose
  placement the compiler's scheduler shifts from one mesh to the next; this is the part a loss
  implementation (SigLIP's ring or global logits, CLIP's local or global loss) decides."""
  loss_fn = exp.loss_fn
  batch_rows, whole = sharding.batch_sharding(exp.mesh), sharding.replicated(exp.mesh)
  # Abstract: nothing may run on the devices (a TPU topology's can only compile).
  rng = jax.ShapeDtypeStruct((2,), jnp.uint32, sharding=whole)
  outputs = jax.eval_shape(
    lambda params, batch, rng: loss_fn.outputs(
      params, loss_fn.inputs(exp.model_batch(batch), rng), rng, model=exp.model, train=True
    ),
    abstract_params,
    abstract_batch,
    rng,
  )
  outputs = jax.tree.map(
    lambda x: jax.ShapeDtypeStruct(
      x.shape, x.dtype, sharding=batch_rows if x.ndim and x.shape[0] == exp.batch_size else whole
    ),
    outputs,
  )
  total_loss = lambda outputs, batch, rng: loss_fn.losses(
    outputs, loss_fn.inputs(exp.model_batch(batch), rng)
  )[0]
  # allow_int: outputs may hold integers (indices, masks), whose gradient is empty.
  step = jax.value_and_grad(total_loss, allow_int=True)
  compiled = jax.jit(step).lower(outputs, abstract_batch, rng).compile()
  memory = compiled.memory_analysis()
  return None if memory is None else int(memory.temp_size_in_bytes)


def compile_report(exp, log=print, topology: str | None = None) -> dict:
  """Compiles `exp`'s train step on abstract inputs; returns {flops_per_step, *_bytes, params, ...}."""
  abstract_state = exp.abstract_state()
  example = exp.train_preprocess(exp.data.train[0], None)
  batch_sharding = sharding.batch_sharding(exp.mesh)
  abstract_batch = {
    k: jax.ShapeDtypeStruct((exp.batch_size,) + v.shape, v.dtype, sharding=batch_sharding)
    for k, v in example.items()
  }
  with jax.set_mesh(exp.mesh), nn.logical_axis_rules(sharding.RULES):
    compiled = exp.jit_train_step().lower(abstract_state, abstract_batch).compile()
    objectives_temp = objectives_temp_bytes(exp, abstract_state.params, abstract_batch)
  devices = list(exp.mesh.devices.flat)
  report = {
    "devices": len(devices),
    "device_kind": devices[0].device_kind,
    "mesh": dict(exp.mesh.shape),
    "global_batch": exp.batch_size,
    "dtype": jnp.dtype(exp.model.dtype).name,
    "params": sum(x.size for x in jax.tree.leaves(exp.abstract_params)),
    "flops_per_step_per_device": flops_lib.compiled_flops(compiled),
    "model_flops_per_step": flops_lib.model_flops(exp),
  }
  memory = compiled.memory_analysis()
  for name in (
    "argument_size_in_bytes",
    "output_size_in_bytes",
    "temp_size_in_bytes",
    "alias_size_in_bytes",
    "generated_code_size_in_bytes",
  ):
    value = getattr(memory, name, None) if memory is not None else None
    if value is not None:
      report[name.replace("_size_in_bytes", "_bytes")] = int(value)
  if objectives_temp is not None:
    report["objectives_temp_bytes"] = objectives_temp
  # Donated state buffers are reused for the outputs (aliased), so they are not counted twice.
  keys = ("argument_bytes", "output_bytes", "temp_bytes", "generated_code_bytes")
  if all(k in report for k in keys):
    report["total_bytes_per_device"] = sum(report[k] for k in keys) - report.get("alias_bytes", 0)
  capacity = device_capacity(devices)
  where = (
    f"TPU topology {topology} ({devices[0].device_kind})" if topology else devices[0].device_kind
  )
  log(
    f"Compiled the train step for mesh {report['mesh']} ({report['devices']} devices of {where}), global batch "
    f"{report['global_batch']}, {report['params'] / 1e6:.2f}M parameters, compute dtype {report['dtype']}"
  )
  flops = report["flops_per_step_per_device"]
  log(
    f"  FLOPs per step per device: {flops / 1e9:,.2f} GFLOP (XLA's count, HFU's numerator)"
    if flops
    else "  FLOPs: not reported by this backend"
  )
  log(
    f"  model FLOPs per step per device: {report['model_flops_per_step'] / len(devices) / 1e9:,.2f} "
    "GFLOP (matmuls without remat, MFU's numerator)"
  )
  for key in keys + ("alias_bytes", "total_bytes_per_device"):
    if key in report:
      log(f"  {key.replace('_', ' ')}: {_mib(report[key])}")
  if "objectives_temp_bytes" in report:
    log(
      f"  objectives' temp bytes (losses and their gradients, compiled apart from the model): "
      f"{_mib(report['objectives_temp_bytes'])}"
    )
  if capacity and report.get("total_bytes_per_device", 0) > capacity:
    raise ConfigError(
      f"the train step needs about {_mib(report['total_bytes_per_device'])} per device but a "
      f"device has {_mib(capacity)}; use a larger mesh (fsdp/tensor), remat, or a smaller batch"
    )
  if capacity:
    report["device_capacity_bytes"] = int(capacity)
    log(f"  device capacity: {_mib(capacity)}")
  return report
