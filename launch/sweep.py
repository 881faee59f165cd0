"""python launch/sweep.py SWEEP --backend local|tpu_vm|slurm [--dry-run]: see vlm_jax/launch/cli.py."""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from vlm_jax.launch import cli  # noqa: E402  pylint: disable=wrong-import-position

if __name__ == "__main__":
  sys.exit(cli.main())
