r"""Benchmark the train step of any config: one JSON line with compile time, step time, images/s, MFU.

  python -m vlm_jax.tools.bench --config experiments/clip_b32.py:tiny [--steps 10] [--config.batch_size=64]

The step runs on one batch of the run's own data over and over, so this measures the step, not the input
pipeline.
MFU: the model's matmul FLOPs (counted from the traced step without remat) over the chip's peak for the
compute dtype (a table by device kind; on CPUs a matmul measured on the spot); HFU: XLA's FLOP count of the
compiled step (remat recompute, elementwise ops and optimizer included) over the same peak.

`--with_data` also runs the loop as the trainer does (dispatch the step; batches from the configured data
pipeline, data.device_prefetch of them in flight to the devices while it runs) and reports its step time
next to the same loop on one fixed batch, alternating rounds so that machine noise hits both:
`data_slowdown` near 1 means the pipeline keeps the step fed.

`--against open_clip` (CLIP recipes) also times open_clip's train step for the same config in turns with
vlm_jax's (vlm_jax/tools/open_clip_step.py): `vs_open_clip` is vlm_jax's step time over open_clip's; `phases`
gives both sides' forward (the loss) and forward+backward times (medians of the rounds;
`phases_fastest_round` the fastest), so the optimizer is the difference.
"""

import json
import statistics
import time

from absl import app, flags, logging

from vlm_jax.cli import FLAGS, fail, parse_flags

flags.DEFINE_integer("steps", 10, "Timed steps (after the warm-up).")
flags.DEFINE_integer("warmup", 2, "Untimed steps after compilation.")
flags.DEFINE_boolean("with_data", False, "Also time the step fed by the configured data pipeline.")
flags.DEFINE_integer(
  "rounds", 3, "With --with_data or --against: alternating rounds of --steps steps per mode."
)
flags.DEFINE_enum(
  "against",
  None,
  ["open_clip"],
  "Also time open_clip's train step for the same CLIP config (PyTorch, same machine), in turns.",
)


def fixed_batch(exp):
  """One batch of the run's own data through its preprocessing, with every field its objectives prepare
  on the host (word boundaries, question/answer pairs), timed over and over."""
  iterator = exp.train_iterator()
  try:
    return next(iterator)
  finally:
    close = getattr(iterator, "close", None)
    if close:
      close()


def _loop_time(step, state, batch, next_batch, steps):
  """Seconds per step of the trainer's loop shape: the next batch is loaded while the step runs."""
  import jax  # pylint: disable=import-outside-toplevel

  start = time.perf_counter()
  for _ in range(steps):
    state, metrics = step(state, batch)
    batch = next_batch(batch)
  jax.block_until_ready(metrics)
  return (time.perf_counter() - start) / steps, state, batch


def data_feed(exp, state, steps: int, rounds: int) -> dict:
  """Step time on one fixed batch vs fed by the data pipeline, in alternating rounds (medians)."""
  from vlm_jax.data import pipeline  # pylint: disable=import-outside-toplevel

  data = exp.config.data
  feed = pipeline.DevicePrefetch(
    exp.train_iterator(), exp.global_batch, data.get("device_prefetch", 2)
  )
  fetch = lambda _: next(feed)
  batch = fetch(None)
  step = exp.compile_train_step(
    state, batch
  )  # the pipeline's batches may carry more keys than random ones
  fixed, fed, data_batch = [], [], fetch(None)
  for _ in range(rounds):
    seconds, state, _ = _loop_time(step, state, batch, lambda b: b, steps)
    fixed.append(seconds)
    seconds, state, data_batch = _loop_time(step, state, data_batch, fetch, steps)
    fed.append(seconds)
  feed.close()
  return {
    "step_time_fixed_batch_s": statistics.median(fixed),
    "step_time_with_data_s": statistics.median(fed),
    "data_slowdown": statistics.median(fed) / statistics.median(fixed),
    "data": exp.data.description,
    "decoding": f"{data.get('worker_processes', 0)} worker processes"
    if data.get("worker_processes", 0)
    else f"{data.get('num_threads', 8)} threads",
    "device_prefetch": data.get("device_prefetch", 2),
  }


def _phase_fns(exp, state, batch):
  """vlm_jax's forward (the loss) and forward+backward (loss and gradients) of the train step, jitted
  with the step's shardings, as zero-argument callables that block until done."""
  import flax.linen as nn  # pylint: disable=import-outside-toplevel
  import jax  # pylint: disable=import-outside-toplevel

  from vlm_jax.core import sharding  # pylint: disable=import-outside-toplevel

  rng = jax.random.fold_in(state.rng, state.step)
  loss = lambda params, batch: exp.loss(params, batch, rng)[0]
  with jax.set_mesh(exp.mesh), nn.logical_axis_rules(sharding.RULES):
    forward = jax.jit(loss).lower(state.params, batch).compile()
    backward = jax.jit(jax.value_and_grad(loss)).lower(state.params, batch).compile()
  return {
    "forward": lambda: jax.block_until_ready(forward(state.params, batch)),
    "forward_backward": lambda: jax.block_until_ready(backward(state.params, batch)),
  }


def _seconds_per_call(fn, calls: int) -> float:
  start = time.perf_counter()
  for _ in range(calls):
    fn()
  return (time.perf_counter() - start) / calls


def against_open_clip(exp, step, state, batch, steps: int, rounds: int) -> dict:
  """vlm_jax's and open_clip's step times on the same batch, in alternating rounds (medians), and the
  same for the step's phases: forward (the loss) and forward+backward (no optimizer)."""
  import jax  # pylint: disable=import-outside-toplevel

  from vlm_jax.tools import open_clip_step  # pylint: disable=import-outside-toplevel

  torch_step = open_clip_step.build_step(exp, jax.device_get(batch))
  torch_step()  # warm-up: allocations, oneDNN primitive creation
  ours, theirs = [], []
  for _ in range(rounds):
    seconds, state, _ = _loop_time(step, state, batch, lambda b: b, steps)
    ours.append(seconds)
    theirs.append(_seconds_per_call(torch_step, steps))
  # The phases are timed in the same alternating rounds: all four in each round, so a burst of load
  # on the machine hits every phase alike instead of the one whose turn it was.
  calls = {
    (name, side): fn
    for name, ours_fn in _phase_fns(exp, state, batch).items()
    for side, fn in (("vlm_jax_s", ours_fn), ("open_clip_s", getattr(torch_step, name)))
  }
  for fn in calls.values():
    fn()  # warm-up: compilation, and PyTorch's first-call allocations
  times = {key: [] for key in calls}
  for _ in range(rounds):
    for key, fn in calls.items():
      times[key].append(_seconds_per_call(fn, steps))
  # Medians for the figures; the fastest round too, the one least disturbed by other load (PyTorch's
  # eager ops on a shared CPU can lose whole rounds to thread contention, medians included).
  phases, fastest = {}, {}
  for (name, side), seconds in times.items():
    phases.setdefault(name, {})[side] = statistics.median(seconds)
    fastest.setdefault(name, {})[side] = min(seconds)
  return {
    "open_clip_step_time_s": statistics.median(theirs),
    "vlm_jax_step_time_interleaved_s": statistics.median(ours),
    "vs_open_clip": statistics.median(ours) / statistics.median(theirs),
    "phases": phases,
    "phases_fastest_round": fastest,
    "open_clip_parameters": torch_step.parameters,
    "torch_threads": torch_step.threads,
  }


def benchmark(
  config,
  steps: int = 10,
  warmup: int = 2,
  with_data: bool = False,
  rounds: int = 3,
  against: str | None = None,
) -> dict:
  import jax  # pylint: disable=import-outside-toplevel

  from vlm_jax import builtins  # noqa: F401  pylint: disable=import-outside-toplevel,unused-import  (registers the built-ins)
  from vlm_jax.assembly import flops  # pylint: disable=import-outside-toplevel
  from vlm_jax.assembly.experiment import Experiment  # pylint: disable=import-outside-toplevel

  exp = Experiment(config, log=lambda *a: None)
  state = exp.init_state()
  batch = exp.global_batch(fixed_batch(exp))
  start = time.perf_counter()
  step = exp.compile_train_step(state, batch)
  compile_s = time.perf_counter() - start
  for _ in range(warmup):
    state, _ = step(state, batch)
  jax.block_until_ready(state)
  times = []
  for _ in range(steps):
    start = time.perf_counter()
    state, metrics = step(state, batch)
    jax.block_until_ready(metrics)
    times.append(time.perf_counter() - start)
  step_time = statistics.median(times)
  fed = data_feed(exp, state, steps, rounds) if with_data else {}
  compared = against_open_clip(exp, step, state, batch, steps, rounds) if against else {}
  cost = flops.step_flops(exp, step)
  utilisation = cost.utilisation(step_time)
  return {
    "model": config.model.name,
    "image": config.model.image.get("variant", ""),
    "text": config.model.text.get("variant", ""),  # a single-tower model has none
    "batch_size": exp.batch_size,
    "mesh": dict(exp.mesh.shape),
    "devices": jax.device_count(),
    "platform": jax.devices()[0].platform,
    "device_kind": jax.devices()[0].device_kind,
    "compile_s": round(compile_s, 3),
    "step_time_median_s": step_time,
    "step_time_min_s": min(times),
    "images_per_s": exp.batch_size / step_time,
    "dtype": jax.numpy.dtype(exp.model.dtype).name,
    "model_flops_per_step": cost.model,
    "hardware_flops_per_step": cost.hardware and cost.hardware * cost.devices,
    "peak_flops_per_device": cost.peak,
    "peak_source": cost.peak_source,
    "mfu": utilisation["perf/mfu"],
    "hfu": utilisation.get("perf/hfu"),
    "parameters": sum(x.size for x in jax.tree.leaves(exp.abstract_params)),
    **fed,
    **compared,
  }


def main(argv):
  del argv
  if FLAGS.config is None:
    fail("--config is required, e.g. --config experiments/clip_b32.py:tiny")
  from vlm_jax.errors import ConfigError  # pylint: disable=import-outside-toplevel

  try:
    print(
      json.dumps(
        benchmark(
          FLAGS.config, FLAGS.steps, FLAGS.warmup, FLAGS.with_data, FLAGS.rounds, FLAGS.against
        )
      ),
      flush=True,
    )
  except ConfigError as e:
    fail(str(e))


if __name__ == "__main__":
  logging.set_verbosity(logging.WARNING)
  app.run(main, flags_parser=parse_flags)
