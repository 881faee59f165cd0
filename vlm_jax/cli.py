"""Command-line pieces shared by `main` and `bench`: the --config flag and one-line errors."""
import re
import sys

from absl import flags
from ml_collections import config_flags

config_flags.DEFINE_config_file("config", None, "Experiment config: path/to/file.py[:variant].",
                                lock_config=True)
FLAGS = flags.FLAGS


def fail(message: str, code: int = 2):
  print(f"error: {message}", file=sys.stderr)
  sys.exit(code)


def parse_flags(argv):
  """absl's parser, but a bad --config override (unknown key, wrong type) is one line, not a traceback."""
  try:
    return FLAGS(argv)
  except (flags.Error, AttributeError, KeyError, TypeError, ValueError) as e:
    message = " ".join(re.sub(r"\\n|\\|'|\"", " ", str(e)).split())
    overrides = [a.split("=")[0] for a in argv[1:] if a.startswith("--config.")]
    if isinstance(e, (AttributeError, KeyError)):
      message = f"unknown config key {message.split()[0]!r}" + (
          f" ({' '.join(message.split()[1:])})" if len(message.split()) > 1 else "")
    fail(f"bad config override {' '.join(overrides)}: {message}")
