"""The local backend: runs a sweep's runs on this machine, `parallel` at a time, each logging to its
workdir's train.log. A finished run (final_eval.json) is skipped; an unfinished one resumes from its last
checkpoint, because the same command continues a workdir."""
import os
import shlex
import subprocess
import sys
import time

from vlm_jax.launch import sweep as sweep_lib


def finished(run) -> bool:
  return os.path.exists(os.path.join(run.workdir, "final_eval.json"))


def run_sweep(runs, sweep_name: str, *, parallel: int = 1, dry_run: bool = False, log=print,
              python: str = sys.executable, env=None) -> dict:
  """Returns {run name: 'skipped' | 'finished' | 'failed (exit N, see LOG)'}; dry_run prints the commands."""
  status, queue, active = {}, [], []
  for run in runs:
    if finished(run):
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
      logfile = open(os.path.join(run.workdir, "train.log"), "a")  # pylint: disable=consider-using-with
      resuming = os.path.isdir(os.path.join(run.workdir, "checkpoints"))
      log(f"{run.name}: {'resuming' if resuming else 'starting'} -> {run.workdir}")
      process = subprocess.Popen(sweep_lib.main_command(run, python), stdout=logfile, stderr=subprocess.STDOUT,
                                 env=env)
      active.append((run, process, logfile, time.perf_counter()))
    time.sleep(0.5)
    for item in list(active):
      run, process, logfile, start = item
      if process.poll() is None:
        continue
      active.remove(item)
      logfile.close()
      seconds = time.perf_counter() - start
      if process.returncode == 0 and finished(run):
        status[run.name] = "finished"
        log(f"{run.name}: finished in {seconds:.0f}s")
      else:
        status[run.name] = f"failed (exit {process.returncode}, see {os.path.join(run.workdir, 'train.log')})"
        log(f"{run.name}: {status[run.name]}")
  return status
