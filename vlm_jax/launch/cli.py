r"""Expand a sweep file into named runs and launch them.

python launch/sweep.py experiments/sweeps/objectives_tiny.py --backend local [--parallel 2] [--dry-run]
python launch/sweep.py SWEEP --backend tpu_vm [--dry-run]       # one TPU VM per run, re-created on preemption
python launch/sweep.py SWEEP --backend tpu_vm --delete          # delete the sweep's TPU VMs
python launch/sweep.py SWEEP --backend slurm [--dry-run]        # one sbatch script per run
python launch/sweep.py SWEEP --list                             # the runs and their workdirs
python launch/sweep.py SWEEP --only RUN --set train.max_steps=10  # smoke-test one run of a sweep
"""

import argparse
import sys

from vlm_jax.errors import ConfigError
from vlm_jax.flag_spelling import normalise_argv
from vlm_jax.launch import local, slurm, tpu_vm
from vlm_jax.launch import sweep as sweep_lib


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(
    description=__doc__.split("\n\n")[0],
    formatter_class=argparse.RawDescriptionHelpFormatter,
    epilog=__doc__,
  )
  parser.add_argument("sweep", help="a sweep file (see vlm_jax/launch/sweep.py)")
  parser.add_argument("--backend", choices=("local", "tpu_vm", "slurm"), default="local")
  parser.add_argument(
    "--dry_run", action="store_true", help="print the commands / scripts, run nothing"
  )
  parser.add_argument("--parallel", type=int, default=1, help="local: runs at a time")
  parser.add_argument("--root", default="", help="override the sweep's root folder (or bucket)")
  parser.add_argument(
    "--only", default="", help="comma-separated run names to launch (default: all)"
  )
  parser.add_argument(
    "--set",
    action="append",
    default=[],
    metavar="KEY=VALUE",
    help="a config override for every run, e.g. --set train.max_steps=10 (a smoke test)",
  )
  parser.add_argument("--list", action="store_true", help="list the runs and exit")
  parser.add_argument(
    "--delete", action="store_true", help="tpu_vm: delete the sweep's TPU VMs and exit"
  )
  parser.add_argument("--gcloud", default="gcloud", help=argparse.SUPPRESS)
  args = parser.parse_args(normalise_argv(argv))
  try:
    sweep = sweep_lib.load_sweep(args.sweep)
    extra = dict(sweep_lib.parse_override(o) for o in args.set)
    runs = sweep_lib.expand(
      {**sweep, "overrides": {**(sweep.get("overrides") or {}), **extra}}, args.root or None
    )
    if args.only:
      wanted = set(args.only.split(","))
      unknown = wanted - {r.name for r in runs}
      if unknown:
        raise ConfigError(f"--only names unknown runs: {sorted(unknown)}")
      runs = [r for r in runs if r.name in wanted]
    if args.list:
      for run in runs:
        print(f"{run.name}\t{run.workdir}")
      return 0
    if args.backend == "local":
      status = local.run_sweep(runs, sweep["name"], parallel=args.parallel, dry_run=args.dry_run)
    elif args.backend == "slurm":
      status = slurm.submit(runs, sweep["name"], sweep.get("slurm", {}), dry_run=args.dry_run)
    elif args.delete:
      tpu_vm.delete_all(
        runs, sweep["name"], sweep.get("tpu", {}), dry_run=args.dry_run, gcloud=args.gcloud
      )
      return 0
    else:
      status = tpu_vm.launch(
        runs, sweep["name"], sweep.get("tpu", {}), dry_run=args.dry_run, gcloud=args.gcloud
      )
  except ConfigError as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  failed = [name for name, s in status.items() if s.startswith("failed")]
  for name in failed:
    print(f"FAILED {name}: {status[name]}", file=sys.stderr)
  return 1 if failed else 0
