"""The SLURM backend: one sbatch script per run (nodes x GPUs per node, one process per node, which
`jax.distributed` initialises from SLURM's environment), written to the run's workdir and submitted with
`sbatch`. A requeued or resubmitted job resumes from the run's last checkpoint.

Sweep settings (`slurm`): nodes (1), gpus_per_node (8), cpus_per_task (16), time ("24:00:00"), partition,
account, qos, venv (a virtualenv to activate), setup (extra shell lines), repo (the checkout to run from;
default: this one).
"""
import dataclasses
import os
import shlex
import subprocess

from vlm_jax.launch import sweep as sweep_lib

DEFAULTS = dict(nodes=1, gpus_per_node=8, cpus_per_task=16, time="24:00:00", partition="", account="", qos="",
                venv="", setup="", repo="")


def script(run, sweep_name: str, settings: dict) -> str:
  s = {**DEFAULTS, **(settings or {})}
  if "://" not in run.workdir:   # the job runs from the repo; its paths must not depend on where sbatch ran
    run = dataclasses.replace(run, workdir=os.path.abspath(run.workdir))
  repo = s["repo"] or os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  lines = ["#!/bin/bash",
           f"#SBATCH --job-name={sweep_name}:{run.name}"[:200],
           f"#SBATCH --nodes={s['nodes']}",
           "#SBATCH --ntasks-per-node=1",
           f"#SBATCH --gpus-per-node={s['gpus_per_node']}",
           f"#SBATCH --cpus-per-task={s['cpus_per_task']}",
           f"#SBATCH --time={s['time']}",
           f"#SBATCH --output={run.workdir}/slurm-%j.out",
           "#SBATCH --requeue",
           "#SBATCH --signal=TERM@300   # the trainer saves a checkpoint on SIGTERM and exits"]
  lines += [f"#SBATCH --{k}={s[k]}" for k in ("partition", "account", "qos") if s[k]]
  lines += ["set -euo pipefail", f"cd {shlex.quote(repo)}"]
  if s["venv"]:
    lines.append(f"source {shlex.quote(os.path.join(s['venv'], 'bin', 'activate'))}")
  if s["setup"]:
    lines.append(s["setup"])
  lines.append("srun " + shlex.join(sweep_lib.main_command(run, "python")))
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
    if os.path.exists(os.path.join(run.workdir, "final_eval.json")):
      status[run.name] = "skipped"
      continue
    run.write_sweep_json(sweep_name)
    path = os.path.join(run.workdir, "sbatch.sh")
    with open(path, "w") as f:
      f.write(text)
    result = subprocess.run(["sbatch", path], capture_output=True, text=True, check=False)
    status[run.name] = result.stdout.strip() if result.returncode == 0 else f"failed: {result.stderr.strip()}"
    log(f"{run.name}: {status[run.name]}")
  return status
