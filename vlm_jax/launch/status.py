r"""Exit 0 when a run has finished, 1 otherwise (local or bucket workdirs), for scripts:

  python -m vlm_jax.launch.status WORKDIR && echo finished

The SLURM backend's sbatch script uses it to requeue a run that its time limit stopped with a checkpoint.
"""

import sys

from vlm_jax.launch import sweep as sweep_lib


def main(argv=None) -> int:
  argv = sys.argv[1:] if argv is None else argv
  if len(argv) != 1:
    print("usage: python -m vlm_jax.launch.status WORKDIR", file=sys.stderr)
    return 2
  run = sweep_lib.Run(name="", config="", overrides={}, axes={}, workdir=argv[0])
  finished = run.finished()
  print(f"{argv[0]}: {'finished' if finished else 'not finished'}")
  return 0 if finished else 1


if __name__ == "__main__":
  sys.exit(main())
