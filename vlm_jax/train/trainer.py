"""The one training loop: every model family and objective runs through `train`.

Per step: next batch (global array from each process's rows) -> jitted, sharded, donated train step.
Metrics stay on device until a log, checkpoint or eval point; there they are fetched, checked for
NaN/Inf, averaged and written. A checkpoint is only written after the steps before it were checked
finite, so the last checkpoint on disk is always a good one.
"""

import functools
import json
import signal
import sys
import time

import jax
import numpy as np

from vlm_jax import config_utils, durations, storage
from vlm_jax.assembly import flops
from vlm_jax.assembly.experiment import Experiment
from vlm_jax.core import checkpoint
from vlm_jax.data import pipeline, sources, tokenizers
from vlm_jax.errors import ConfigError
from vlm_jax.eval import harness
from vlm_jax.eval.runner import EvalRunner
from vlm_jax.train import metrics as metrics_lib
from vlm_jax.train.profiler import StepProfiler
from vlm_jax.train.workdir_lock import WorkdirLock

FINAL_EVAL = "final_eval.json"


class TrainingDiverged(RuntimeError):
  pass


class Stopped(Exception):
  """Raised after SIGTERM or Ctrl-C stopped the run with a checkpoint saved: nothing after it (the next
  stage of a staged recipe, the next run of a sweep) may start from an unfinished run."""


class _Preemption:
  """SIGTERM (preemption, scancel, `kill`) and Ctrl-C (SIGINT) ask the loop to checkpoint and exit cleanly;
  a second Ctrl-C stops at once (KeyboardInterrupt), keeping the checkpoints already written.

  One process: a signal handler sets a flag. Several: JAX's preemption service (started by
  `jax.distributed.initialize`) catches SIGTERM on any process and agrees on one step at which every
  process saves, without a blocking collective in each step; Ctrl-C there stops at once as before."""

  SIGNALS = (signal.SIGTERM, signal.SIGINT)

  def __init__(self):
    self.requested = False
    self._multi = jax.process_count() > 1
    self._previous = (
      {} if self._multi else {s: signal.signal(s, self._handle) for s in self.SIGNALS}
    )

  def _handle(self, signum, frame):
    del frame
    if signum == signal.SIGINT:
      if self.requested:
        raise KeyboardInterrupt
      # From a signal handler: one write, no logging machinery.
      sys.stderr.write(
        "\nCtrl-C: saving a checkpoint at the next step, then stopping "
        "(Ctrl-C again stops at once, without it).\n"
      )
    self.requested = True

  def should_stop(self, step) -> bool:
    if self._multi:
      from jax.experimental import multihost_utils  # pylint: disable=import-outside-toplevel

      return multihost_utils.reached_preemption_sync_point(step)
    return self.requested

  def restore(self):
    for sig, previous in self._previous.items():
      signal.signal(sig, previous)


def _all_agree(ok: bool) -> bool:
  """Whether every process reports ok (one collective; used once at start)."""
  if jax.process_count() == 1:
    return ok
  from jax.experimental import multihost_utils  # pylint: disable=import-outside-toplevel

  return bool(multihost_utils.process_allgather(np.array(ok)).all())


def _resume_changes(config, workdir, allowed: bool) -> dict:
  """The settings that differ from the workdir's config.json; those that change the training need
  `allowed` (--allow_config_change)."""
  stored = storage.join(workdir, config_utils.WORKDIR_CONFIG)
  if not storage.exists(stored):
    return {}
  changes = config_utils.config_changes(storage.read_json(stored), config)
  training = {k: v for k, v in changes.items() if config_utils.changes_training(k)}
  if training and not allowed:
    raise ConfigError(
      f"resuming {workdir} with settings that change its training: "
      f"{config_utils.describe_changes(training)}. Pass --allow_config_change to go on (the changes "
      f"are recorded with the step in {config_utils.CONFIG_HISTORY}), or use a new --workdir"
    )
  return changes


def _record_config_changes(workdir, step, changes):
  path = storage.join(workdir, config_utils.CONFIG_HISTORY)
  before = storage.read_text(path) if storage.exists(path) else ""
  line = json.dumps({"step": step, "changes": {k: list(v) for k, v in changes.items()}})
  storage.write_text(path, before + line + "\n")


def _check_some_intact(latest, ckpt_dir):
  if latest is None:
    raise checkpoint.CheckpointUnreadable(
      f"no checkpoint in {ckpt_dir} can be read; the damaged ones were moved aside (<step>.corrupt). "
      "Start over with a new --workdir, or move a checkpoint back once its files are repaired"
    )


def _mean_metrics(pending):
  """Fetches the metrics of the steps since the last flush, checks them finite, and averages them."""
  host = jax.device_get([m for _, m in pending])
  for (step, _), values in zip(pending, host):
    bad = {
      k: float(v) for k, v in values.items() if k in ("loss", "grad_norm") and not np.isfinite(v)
    }
    if bad:
      raise TrainingDiverged(step, bad)
  return {f"train/{k}": float(np.mean([m[k] for m in host])) for k in host[-1]}


def train(config, workdir: str, *, log=print, allow_config_change: bool = False) -> dict:
  """Trains (or resumes) the run in `workdir`; returns the final eval metrics.

  A resume whose config changes the training (config_utils.changes_training) is refused unless
  `allow_config_change`; the changes are then recorded in config_history.jsonl with the step."""
  workdir = storage.resolve(workdir)
  main = jax.process_index() == 0
  lock, error, created = WorkdirLock(workdir, log=log), None, not storage.exists(workdir)
  if main:
    try:
      storage.check_writable_dir(workdir)
      lock.acquire()
    except ConfigError as e:
      error = e
  if not _all_agree(error is None):
    raise error or ConfigError(f"process 0 could not take {workdir}; see its log")
  try:
    return _train(config, workdir, main, log, allow_config_change)
  finally:
    if main:
      lock.release()
      if created and storage.isdir(workdir) and not storage.listdir(workdir):
        storage.path(
          workdir
        ).rmdir()  # a run that failed before writing anything leaves no empty folder


def _train(config, workdir, main, log, allow_config_change):
  exp = Experiment(config, log=log)
  ckpt_dir = storage.join(workdir, "checkpoints")
  steps = checkpoint.all_steps(ckpt_dir)
  # Damaged checkpoints (a full disk, a cut copy) are moved aside and the one before is used.
  intact = functools.partial(
    checkpoint.newest_intact, ckpt_dir, log=log, main=main, agree=_all_agree
  )
  latest = None
  final_path = storage.join(workdir, FINAL_EVAL)
  if steps:
    # Before anything is written: a run resumed with another model keeps its config.json and checkpoints.
    saved, latest = intact(steps, lambda step: checkpoint.saved_param_shapes(ckpt_dir, step))
    _check_some_intact(latest, ckpt_dir)
    checkpoint.check_params_match(
      saved, checkpoint.flat_paths(exp.abstract_params), f"{ckpt_dir} (step {latest}, resuming)"
    )
    if latest >= exp.stop_step and storage.exists(final_path):
      log(
        f"{workdir} is a finished run ({latest} of {exp.stop_step} steps); its results are in {final_path}. "
        "Evaluate it with --mode=eval, train longer with a larger --config.train.duration, or use a new --workdir."
      )
      return {k: v for k, v in storage.read_json(final_path).items() if k != "step"}
  changes = _resume_changes(config, workdir, allow_config_change) if latest is not None else {}
  if changes:
    log(f"Resuming with changed settings: {config_utils.describe_changes(changes)}")
  log(
    f"Data: {exp.data.description}"
    + (" [no dataset configured: using the embedded one]" if config.data.name == "embedded" else "")
  )
  log(
    f"Mesh: {dict(exp.mesh.shape)} over {jax.device_count()} {jax.devices()[0].platform} devices, "
    f"{jax.process_count()} process(es); global batch {exp.batch_size}; {exp.total_steps} steps"
    + (
      f" (stopping at step {exp.stop_step}: train.max_steps)"
      if exp.stop_step < exp.total_steps
      else ""
    )
  )
  # every: how often during training ("0 steps": at the end only); "never": not even at the end.
  evals = {k: c for k, c in config.evals.items() if c.every != durations.NEVER}
  evaluator = EvalRunner(exp, evals)
  # Each evaluation is also written as the harness's records (eval_records/), which tables read.
  records = harness.Records(workdir, config)
  task_configs = {k: harness.task_settings(config, k) for k in evals}
  eval_every = {
    k: durations.to_steps(c.every, batch_size=exp.batch_size, dataset_size=len(exp.data.train))
    for k, c in evals.items()
  }
  sources.SKIPS.reset()
  # Global batches already on their devices: the next ones are in flight while a step runs.
  data_iter = pipeline.DevicePrefetch(
    exp.train_iterator(), exp.global_batch, config.data.get("device_prefetch", 2)
  )
  # A fresh run writes nothing until its state exists (init_from read): a bad start leaves no half-made workdir.
  state = exp.init_state() if latest is None else None
  ckpt = checkpoint.Checkpointer(
    ckpt_dir,
    keep=config.train.keep_checkpoints,
    async_save=config.train.get("async_checkpoints", True),
  )
  if latest is not None:  # restored straight into its shardings: no random state is built first

    def restore(step):
      ckpt.reload()
      return ckpt.restore(step, exp.abstract_state(), data_iter)

    state, latest = intact([step for step in steps if step <= latest], restore)
    _check_some_intact(latest, ckpt_dir)
  if main:
    if changes:  # config.json becomes the new config; the history keeps what the earlier steps used
      _record_config_changes(workdir, latest, changes)
    config_utils.save_workdir_config(config, workdir)
  writer = metrics_lib.MetricWriter(workdir, config=config)
  if latest is not None:
    writer.drop_after(latest)
    log(f"Resumed from checkpoint at step {latest} in {ckpt.directory}")
  step = int(state.step)
  last_good = latest

  batch = next(data_iter)
  log(
    f"Compiling the train step ({sum(x.size for x in jax.tree.leaves(exp.abstract_params)) / 1e6:.2f}M "
    "parameters) ..."
  )
  compile_start = time.perf_counter()
  train_step = exp.compile_train_step(state, batch)
  log(f"Compiled the train step in {time.perf_counter() - compile_start:.1f}s")
  progress = metrics_lib.Progress(
    exp.stop_step,
    exp.batch_size,
    flops.step_flops(exp, train_step) if config.train.get("mfu", True) else None,
  )
  preemption = _Preemption()
  profiler = StepProfiler(config.train.get("profile_steps", ()), workdir, log=log)
  pending, final_eval, cut_reported, stopped = [], {}, False, ""
  try:
    progress.start(step)
    while step < exp.stop_step:
      profiler.before_step(step)
      with jax.profiler.StepTraceAnnotation("train", step_num=step):
        state, step_metrics = train_step(state, batch)
      step += 1
      profiler.after_step(step, step_metrics)
      pending.append((step, step_metrics))
      done = step == exp.stop_step
      stop = preemption.should_stop(step)
      save = done or stop or (exp.checkpoint_every and step % exp.checkpoint_every == 0)
      evaluate = done or any(every and step % every == 0 for every in eval_every.values())
      if pending and (save or evaluate or step % exp.log_every == 0):
        try:
          record = _mean_metrics(pending)
        except TrainingDiverged as e:
          bad_step, bad = e.args
          raise TrainingDiverged(
            f"non-finite {', '.join(f'{k}={v}' for k, v in bad.items())} at step {bad_step}; stopping. "
            f"The last good checkpoint is step {last_good} in {ckpt.directory}"
            if last_good is not None
            else f"non-finite {bad} at step {bad_step}; stopping (no checkpoint yet)"
          ) from None
        pending = []
        record.update({f"data/skipped/{k}": float(v) for k, v in sources.SKIPS.snapshot().items()})
        if not cut_reported and tokenizers.TEXT_COUNTS.cut:
          cut_reported = True
          counts = tokenizers.TEXT_COUNTS
          log(
            f"Note: {counts.cut} of the {counts.encoded} captions read so far were longer than "
            f"model.text.max_len={exp.max_len} tokens and were cut; raise it if the ends matter"
          )
        record.update(progress.measure(step))
        writer.write(step, record)
        log(progress.line(step, record))
        ckpt.check()  # a background save that failed stops the run here
      elif main and progress.heartbeat_due():
        log(progress.heartbeat(step))
      if save:
        ckpt.save(step, state, data_iter)
        last_good = step
      if evaluate:
        final_eval = evaluator.run(
          state.params,
          on_each=lambda key, metrics, seconds: records.write(
            step,  # noqa: B023  (called within this iteration)
            evaluator,
            key,
            task_configs[key],
            metrics,
            seconds,
          ),
        )
        if final_eval:
          writer.write(step, final_eval)
          log(
            f"Eval at step {step}: "
            + ", ".join(f"{k[5:]}={v:.4f}" for k, v in sorted(final_eval.items()))
          )
        progress.start(step)  # do not count eval time as train throughput
      if stop and not done:
        stopped = (
          f"Stopping at step {step} with a checkpoint saved; run the same command to resume."
        )
        break
      if not done:
        batch = next(data_iter)
  finally:
    profiler.stop()
    preemption.restore()
    data_iter.close()  # reader and decoding threads of streamed data
    try:
      ckpt.wait()
    finally:
      ckpt.close()
      writer.close()
  if stopped:
    raise Stopped(stopped)
  # final_eval.json marks a finished run (staged recipes skip finished stages); a resumed finished run
  # keeps the one it has.
  if step == exp.stop_step and main and (final_eval or not storage.exists(final_path)):
    storage.write_json(final_path, {"step": step, **final_eval})
  if main and step == exp.stop_step:
    log(
      f"Finished: checkpoints, metrics.jsonl, TensorBoard events and {FINAL_EVAL} are in {workdir}"
    )
  return final_eval
