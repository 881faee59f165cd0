"""The SLURM backend: one sbatch script per run (nodes x GPUs per node, one process per node, which
`jax.distributed` initialises from SLURM's environment), written to the run's workdir and submitted with
`sbatch`. A requeued or resubmitted job resumes from the run's last checkpoint.

Time limits: SLURM sends SIGTERM 5 minutes before the limit; the trainer saves and exits 0, and the script
then requeues the job (`scontrol requeue`) unless the run has finished, so a long run continues over as
many allocations as it needs. (`--requeue` alone only covers node failures and preemption.)

Sweep settings (`slurm`): nodes (1), gpus_per_node (8), cpus_per_task (16), time ("24:00:00"), partition,
account, qos, venv (a virtualenv to activate; default: the one the launcher runs in, or its conda
environment), setup (extra shell lines), repo (the checkout to run from; default: this one).
"""

import dataclasses
import os
import shlex
import subprocess
import sys

from vlm_jax import storage
from vlm_jax.launch import sweep as sweep_lib

DEFAULTS = dict(
  nodes=1,
  gpus_per_node=8,
  cpus_per_task=16,
  time="24:00:00",
  partition="",
  account="",
  qos="",
  venv="",
  setup="",
  repo="",
)


def launching_environment() -> list:
  """Shell lines that activate the Python environment this launcher runs in (a venv, or conda's)."""
  if sys.prefix != sys.base_prefix:
    return [
      f"source {shlex.quote(os.path.join(sys.prefix, 'bin', 'activate'))}"
    ]  # local path: the venv
  if os.environ.get("CONDA_PREFIX"):
    return [
      f"export PATH={shlex.quote(os.path.join(os.environ['CONDA_PREFIX'], 'bin'))}:$PATH"
    ]  # local path
  return []


def script(run, sweep_name: str, settings: dict) -> str:
  s = {**DEFAULTS, **(settings or {})}
  # The job runs from the repo; its paths must not depend on where sbatch ran.
  run = dataclasses.replace(run, workdir=storage.resolve(run.workdir))
  repo = s["repo"] or os.path.dirname(
    os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  )  # local path
  lines = [
    "#!/bin/bash",
    f"#SBATCH --job-name={sweep_name}:{run.name}"[:200],
    f"#SBATCH --nodes={s['nodes']}",
    "#SBATCH --ntasks-per-node=1",
    f"#SBATCH --gpus-per-node={s['gpus_per_node']}",
    f"#SBATCH --cpus-per-task={s['cpus_per_task']}",
    f"#SBATCH --time={s['time']}",
    f"#SBATCH --output={run.workdir}/slurm-%j.out",
    "#SBATCH --requeue",
    "#SBATCH --signal=TERM@300   # the trainer saves a checkpoint on SIGTERM and exits",
  ]
  lines += [f"#SBATCH --{k}={s[k]}" for k in ("partition", "account", "qos") if s[k]]
  lines += ["set -euo pipefail", f"cd {shlex.quote(repo)}"]
  if s["venv"]:
    lines.append(
      f"source {shlex.quote(os.path.join(s['venv'], 'bin', 'activate'))}"
    )  # local path: the venv
  else:
    lines += launching_environment()
  if s["setup"]:
    lines.append(s["setup"])
  lines.append("srun " + shlex.join(sweep_lib.main_command(run, "python")))
  lines += [
    "# Stopped by the time limit (SIGTERM: a checkpoint is saved, exit 0) but not finished: run again.",
    f"if ! python -m vlm_jax.launch.status {shlex.quote(run.workdir)}; then",
    '  scontrol requeue "$SLURM_JOB_ID"',
    "fi",
  ]
  return "\n".join(lines) + "\n"


def submit(runs, sweep_name: str, settings: dict, *, dry_run: bool = False, log=print) -> dict:
  """Writes WORKDIR/sbatch.sh per run and submits it (dry_run: prints the scripts instead)."""
  status = {}
  for run in runs:
    text = script(run, sweep_name, settings)
    if dry_run:
      log(f"# {run.name}\n{text}")
      status[run.name] = "dry-run"
      continue
    if run.finished():
      status[run.name] = "skipped"
      continue
    run.write_sweep_json(sweep_name)
    # sbatch reads a local file; the copy in the workdir (a bucket, too) records what ran.
    path = storage.join(run.workdir, "sbatch.sh")
    storage.write_text(path, text)
    if storage.is_remote(path):  # local path: sbatch's own copy, on this machine
      path = os.path.join("runs", "slurm", sweep_name, f"{run.name}.sbatch.sh")  # local path
      storage.write_text(path, text)
    result = subprocess.run(["sbatch", path], capture_output=True, text=True, check=False)
    status[run.name] = (
      result.stdout.strip() if result.returncode == 0 else f"failed: {result.stderr.strip()}"
    )
    log(f"{run.name}: {status[run.name]}")
  return status
