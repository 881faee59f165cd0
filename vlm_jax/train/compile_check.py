"""`python -m vlm_jax.main --mode=compile [--topology=v5e:16x16]`: lower and compile the train step for the
configured mesh without training (or reading a checkpoint), and report its memory and FLOPs, so that a sweep
fails fast on a config that does not compile or fit before a pod is paid for. With `--topology`, the mesh is
made of a TPU topology's devices as libtpu describes them on any host (no TPU needed): XLA's TPU compiler
then reports the memory of one chip.

The state and batch are abstract (shapes, dtypes and shardings only); one example is preprocessed to get
the batch's shapes. Memory is XLA's per-device estimate of the compiled step: arguments (state + batch),
outputs, temporaries and generated code; when the device reports its capacity (or the chip table has it),
an estimate above it is an error. The efficiency report adds XLA's bytes accessed, the recomputation ratio
and a roofline bound on step time and MFU from the chip table (`assembly/flops.py`); `--find_max_batch`
searches the largest batch that fits.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp

from vlm_jax.assembly import flops as flops_lib
from vlm_jax.core import sharding
from vlm_jax.errors import ConfigError

FIT_FIX = "use a larger mesh (fsdp/tensor), remat, or a smaller batch"


class DoesNotFit(ConfigError):
  """The train step needs more memory than a device has."""


def _mib(n) -> str:
  return f"{n / 2**20:,.1f} MiB"


def device_capacity(devices) -> int | None:
  """Bytes of memory one device of `devices` has: the runtime's figure for local devices, else the chip
  table's, shared by the TensorCores listed as devices of one chip."""
  device = devices[0]
  try:
    stats = device.memory_stats() or {}
    if stats.get("bytes_limit"):
      return int(stats["bytes_limit"])
  except Exception:  # pylint: disable=broad-except  (topology devices hold no data and have no stats)
    pass
  entry = flops_lib.chip(device.device_kind)
  return None if entry is None else int(entry.hbm_bytes) // flops_lib.devices_per_chip(devices)


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


def measure(exp, memory_only: bool = False) -> dict:
  """Compiles `exp`'s train step on abstract inputs; returns what XLA reports per device (FLOPs, bytes
  accessed, memory), the model FLOPs, and the roofline figures where the chip table knows the device.
  memory_only: the memory figures alone (no second trace for the model FLOPs or the objectives)."""
  abstract_state = exp.abstract_state()
  example = exp.train_preprocess(exp.data.train[0], None)
  batch_sharding = sharding.batch_sharding(exp.mesh)
  abstract_batch = {
    k: jax.ShapeDtypeStruct((exp.batch_size,) + v.shape, v.dtype, sharding=batch_sharding)
    for k, v in example.items()
  }
  with jax.set_mesh(exp.mesh), nn.logical_axis_rules(sharding.RULES):
    try:
      compiled = exp.jit_train_step().lower(abstract_state, abstract_batch).compile()
    except jax.errors.JaxRuntimeError as e:  # XLA's TPU compiler refuses a program larger than HBM
      if "RESOURCE_EXHAUSTED" not in str(e):
        raise
      raise DoesNotFit(
        f"the train step does not fit a device ({str(e).splitlines()[0]}); {FIT_FIX}"
      ) from None
    objectives_temp = (
      None if memory_only else objectives_temp_bytes(exp, abstract_state.params, abstract_batch)
    )
  devices = list(exp.mesh.devices.flat)
  cost = flops_lib.cost_analysis(compiled)
  report = {
    "devices": len(devices),
    "device_kind": devices[0].device_kind,
    "mesh": dict(exp.mesh.shape),
    "global_batch": exp.batch_size,
    "dtype": jnp.dtype(exp.model.dtype).name,
    "params": sum(x.size for x in jax.tree.leaves(exp.abstract_params)),
    "flops_per_step_per_device": flops_lib.compiled_flops(compiled),
    "model_flops_per_step": None if memory_only else flops_lib.model_flops(exp),
  }
  if cost.get("bytes accessed"):
    report["bytes_accessed_per_device"] = float(cost["bytes accessed"])
  if not memory_only:
    # XLA's cost analysis counts a loop's body once: with scanned layers it misses all trips but one.
    # The jaxpr's matmuls, counted through the scans, give what it misses.
    executed, once = flops_lib.executed_matmul_flops(exp)
    report["executed_matmul_flops_per_step"] = executed
    report["scan_undercount"] = executed / once if once else 1.0
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
  if all(k in report for k in MEMORY_KEYS):
    report["total_bytes_per_device"] = sum(report[k] for k in MEMORY_KEYS) - report.get(
      "alias_bytes", 0
    )
  capacity = device_capacity(devices)
  if capacity:
    report["device_capacity_bytes"] = int(capacity)
  if not memory_only:
    report.update(roofline(report, devices))
  return report


MEMORY_KEYS = ("argument_bytes", "output_bytes", "temp_bytes", "generated_code_bytes")


def roofline(report: dict, devices) -> dict:
  """Per device: the step's recomputation ratio (the matmul FLOPs it executes over the model's: 1 without
  remat, up to 4/3 with full remat, as the backward pass runs each block's forward again) and a roofline
  bound on its time, the larger of FLOPs / peak and bytes accessed / HBM bandwidth, with the MFU that
  bound allows. Collectives over the interconnect are not in it: a lower bound on step time, an upper
  bound on MFU. With scanned layers XLA counts each loop's body once: the FLOPs get the missing trips'
  matmuls from the jaxpr (exact), the bytes are scaled by the same factor (an estimate)."""
  n = report["devices"]
  flops, model = report.get("flops_per_step_per_device"), report["model_flops_per_step"] / n
  executed = report.get("executed_matmul_flops_per_step", model * n) / n
  undercount = report.get("scan_undercount", 1.0)
  out = {"recompute_ratio": executed / model} if model else {}
  if flops:
    out["flops_per_device"] = flops + executed * (1 - 1 / undercount)  # the loops' missing trips
  if report.get("bytes_accessed_per_device"):
    out["bytes_per_device"] = report["bytes_accessed_per_device"] * undercount
    out["bytes_estimated"] = undercount > 1
  entry = flops_lib.chip(report["device_kind"])
  peak = entry and (
    entry.peak_16bit if report["dtype"] in ("bfloat16", "float16") else entry.peak_32bit
  )
  if not (flops and peak and entry.hbm_bandwidth and "bytes_per_device" in out):
    return out
  share = flops_lib.devices_per_chip(devices)
  compute_s = out["flops_per_device"] / (peak / share)
  memory_s = out["bytes_per_device"] / (entry.hbm_bandwidth / share)
  step_s = max(compute_s, memory_s)
  return {
    **out,
    "peak_flops_per_device": peak / share,
    "hbm_bandwidth_per_device": entry.hbm_bandwidth / share,
    "chip_source": entry.source,
    "roofline_compute_s": compute_s,
    "roofline_memory_s": memory_s,
    "roofline_step_s": step_s,
    "roofline_bound": "compute" if compute_s >= memory_s else "memory",
    "mfu_bound": model / (peak / share) / step_s,
  }


def fits(report: dict) -> bool:
  if "fits" in report:
    return report["fits"]
  capacity = report.get("device_capacity_bytes")
  return not capacity or report.get("total_bytes_per_device", 0) <= capacity


def compile_report(exp, log=print, topology: str | None = None) -> dict:
  """Compiles `exp`'s train step on abstract inputs, logs the per-device efficiency report and returns
  it; a step that does not fit a device is an error."""
  report = measure(exp)
  devices = list(exp.mesh.devices.flat)
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
  if report.get("scan_undercount", 1.0) > 1:
    log(
      f"  with its scanned layers: {report['flops_per_device'] / 1e9:,.2f} GFLOP per device (XLA counts "
      f"a loop's body once; the jaxpr's matmuls count it {report['scan_undercount']:.2f}x)"
    )
  if "recompute_ratio" in report:
    log(
      f"  recomputation ratio (matmul FLOPs executed / model FLOPs): {report['recompute_ratio']:.3f}"
    )
  if "bytes_per_device" in report:
    log(
      f"  bytes accessed per step per device: {_mib(report['bytes_per_device'])}"
      + (" (estimated: XLA's count scaled as the FLOPs)" if report["bytes_estimated"] else "")
    )
  for key in MEMORY_KEYS + ("alias_bytes", "total_bytes_per_device"):
    if key in report:
      log(f"  {key.replace('_', ' ')}: {_mib(report[key])}")
  if "objectives_temp_bytes" in report:
    log(
      f"  objectives' temp bytes (losses and their gradients, compiled apart from the model): "
      f"{_mib(report['objectives_temp_bytes'])}"
    )
  if "device_capacity_bytes" in report:
    log(f"  device capacity: {_mib(report['device_capacity_bytes'])}")
  if "roofline_step_s" in report:
    ms = lambda seconds: (
      f"{seconds * 1e3:,.1f} ms" if seconds >= 0.01 else f"{seconds * 1e3:.3g} ms"
    )
    log(
      f"  roofline: at least {ms(report['roofline_step_s'])} per step, {report['roofline_bound']}-bound "
      f"(FLOPs: {ms(report['roofline_compute_s'])} at {report['peak_flops_per_device'] / 1e12:,.0f} "
      f"TFLOP/s; bytes: {ms(report['roofline_memory_s'])} at "
      f"{report['hbm_bandwidth_per_device'] / 1e9:,.0f} GB/s; collectives not counted), so MFU at most "
      f"{report['mfu_bound']:.1%} (chip figures: {report['chip_source']})"
    )
  if not fits(report):
    raise DoesNotFit(
      f"the train step needs about {_mib(report['total_bytes_per_device'])} per device but a "
      f"device has {_mib(report['device_capacity_bytes'])}; {FIT_FIX}"
    )
  return report


def find_max_batch(
  make_experiment, batch_shards: int, start: int, log=print, limit: int = 1 << 16, start_report=None
):
  """The largest per-shard batch b (global batch b * batch_shards) whose train step fits a device, by
  compiling. A step's memory is about affine in its batch (the state once, activations per example), so
  each probe is the batch where the line through the two measured probes nearest the boundary meets the
  capacity (3 to 12 compiles for the shipped pod recipes); without two measurements, or after two probes
  on the line in a row that did not halve the interval, it doubles from `start` (or halves) and
  bisects. The answer is a batch that fits whose next batch does not. `make_experiment(global_batch)`
  builds the Experiment; `start_report`, the start's report if it was measured already. Returns (b, its
  report)."""

  def probe(b):
    try:
      report = measure(make_experiment(b * batch_shards), memory_only=True)
    except DoesNotFit as e:  # the compiler itself refused it
      log(f"  batch {b} per shard (global {b * batch_shards}): does not fit ({e})")
      return {"fits": False}
    needs_capacity(report)
    log(
      f"  batch {b} per shard (global {b * batch_shards}): {_mib(report['total_bytes_per_device'])} of "
      f"{_mib(report['device_capacity_bytes'])} per device: {'fits' if fits(report) else 'does not fit'}"
    )
    return report

  def needs_capacity(report):
    if "fits" not in report and not report.get("device_capacity_bytes"):
      raise ConfigError(
        "--find_max_batch needs the devices' memory capacity: compile for a --topology, or run on an "
        "accelerator that reports it"
      )

  def on_the_line(lo, hi):
    """The largest batch the line through the two measured probes nearest the bracket says fits."""
    measured = [b for b, r in reports.items() if "total_bytes_per_device" in r]
    if len(measured) < 2:
      return None
    a, b = sorted(measured, key=lambda b: (abs(b - lo) + (abs(b - hi) if hi else 0), b))[:2]
    ta, tb = reports[a]["total_bytes_per_device"], reports[b]["total_bytes_per_device"]
    capacity = reports[a]["device_capacity_bytes"]
    if (tb - ta) * (b - a) <= 0:  # flat or falling: the line says nothing
      return None
    return int(a + (capacity - ta) * (b - a) // (tb - ta))

  b = max(1, min(start, limit))
  reports = {b: start_report if start_report is not None else probe(b)}
  needs_capacity(reports[b])
  lo, hi = (b, None) if fits(reports[b]) else (None, b)
  while lo is None:  # down from the start until one fits
    if hi == 1:
      raise ConfigError(
        "the train step does not fit a device even at batch 1 per shard; use a larger mesh "
        "(fsdp/tensor) or remat"
      )
    guess = on_the_line(1, hi)
    b = guess if guess is not None and 1 <= guess < hi else hi // 2
    reports[b] = probe(b)
    lo, hi = (b, hi) if fits(reports[b]) else (None, b)
  misses = 0  # probes on the line in a row that did not halve the search; after two, a plain one
  while (hi or limit + 1) - lo > 1:
    was = lo, hi
    guess = on_the_line(lo, hi) if misses < 2 else None
    if guess is None:  # doubling while nothing bounds it, then bisecting
      b = min(2 * lo, limit) if hi is None else (lo + hi) // 2
    elif hi is None:  # the first batch the line says does not fit: a bound, if the line is right
      b = min(max(guess + 1, lo + 1), limit)
    else:  # at least one past what fits, below what does not
      b = min(max(guess, lo + 1), hi - 1)
    reports[b] = probe(b)
    lo, hi = (b, hi) if fits(reports[b]) else (lo, b)
    if was[1] is None:  # unbounded before: bounded now, or at least doubled
      halved = hi is not None or lo >= 2 * was[0]
    else:
      halved = 2 * (hi - lo) <= was[1] - was[0]
    misses = 0 if guess is None or halved else misses + 1
  return lo, reports[lo]
