"""The local backend: runs a sweep's runs on this machine, `parallel` at a time, each logging to its
workdir's train.log. A finished run (final_eval.json) is skipped; an unfinished one resumes from its last
checkpoint, because the same command continues a workdir."""

import os
import shlex
import subprocess
import sys
import time

from vlm_jax import storage
from vlm_jax.launch import sweep as sweep_lib


def _log_path(run, sweep_name: str) -> str:
  """The run's console log: WORKDIR/train.log, or runs/logs/SWEEP/RUN.log on this machine for a bucket workdir."""
  # local path: a child's stdout is a file on this machine
  folder = (
    os.path.join("runs", "logs", sweep_name) if storage.is_remote(run.workdir) else run.workdir
  )  # local path
  os.makedirs(folder, exist_ok=True)  # local path
  return os.path.join(
    folder, f"{run.name}.log" if storage.is_remote(run.workdir) else "train.log"
  )  # local path


def run_sweep(
  runs,
  sweep_name: str,
  *,
  parallel: int = 1,
  dry_run: bool = False,
  log=print,
  python: str = sys.executable,
  env=None,
) -> dict:
  """Returns {run name: 'skipped' | 'finished' | 'failed (exit N, see LOG)'}; dry_run prints the commands."""
  status, queue, active = {}, [], []
  for run in runs:
    if run.finished():
      status[run.name] = "skipped"
      log(f"{run.name}: finished earlier, skipping")
    elif dry_run:
      log(shlex.join(sweep_lib.main_command(run, python)))
    else:
      queue.append(run)
  while queue or active:
    while queue and len(active) < max(1, parallel):
      run = queue.pop(0)
      run.write_sweep_json(sweep_name)
      log_path = _log_path(run, sweep_name)
      logfile = open(log_path, "a")  # pylint: disable=consider-using-with  # local path: the child's stdout
      resuming = storage.isdir(storage.join(run.workdir, "checkpoints"))
      log(f"{run.name}: {'resuming' if resuming else 'starting'} -> {run.workdir}")
      process = subprocess.Popen(
        sweep_lib.main_command(run, python), stdout=logfile, stderr=subprocess.STDOUT, env=env
      )
      active.append((run, process, logfile, time.perf_counter()))
    time.sleep(0.5)
    for item in list(active):
      run, process, logfile, start = item
      if process.poll() is None:
        continue
      active.remove(item)
      logfile.close()
      seconds = time.perf_counter() - start
      if process.returncode == 0 and run.finished():
        status[run.name] = "finished"
        log(f"{run.name}: finished in {seconds:.0f}s")
      else:
        status[run.name] = f"failed (exit {process.returncode}, see {_log_path(run, sweep_name)})"
        log(f"{run.name}: {status[run.name]}")
  return status
