"""Command-line pieces shared by the entry points: the --config flag, flag spelling, one-line errors."""

import glob
import os
import re
import sys

from absl import flags
from ml_collections import config_flags

# A persistent XLA compilation cache, so that a resumed or repeated run (or an eval of the same model)
# skips recompiling: set before JAX is imported. JAX_COMPILATION_CACHE_DIR moves it; empty turns it off.
DEFAULT_COMPILATION_CACHE = os.path.expanduser("~/.cache/vlm_jax/xla")
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", DEFAULT_COMPILATION_CACHE)


def _cpu_only_without_accelerators():
  """With libtpu installed (the test extras, `.[tpu]`) on a host without TPU chips, JAX starts its TPU
  plugin, which prints five lines of errors about TPU hostnames before JAX falls back to the CPU. A host
  with no TPU (no Google PCI device, as JAX's own check) and no GPU device gets JAX_PLATFORMS=cpu, unless
  the user set it. Set before JAX is imported."""
  if "JAX_PLATFORMS" in os.environ:
    return
  for vendor in glob.glob("/sys/bus/pci/devices/*/vendor"):
    with open(vendor) as f:
      if f.read().strip() == "0x1ae0":  # Google: a TPU, or something libtpu may want
        return
  if any(os.path.exists(d) for d in ("/dev/nvidia0", "/dev/nvidiactl", "/dev/dxg", "/dev/kfd")):
    return
  os.environ["JAX_PLATFORMS"] = "cpu"


_cpu_only_without_accelerators()

config_flags.DEFINE_config_file(
  "config", None, "Experiment config: path/to/file.py[:variant].", lock_config=True
)
FLAGS = flags.FLAGS


def fail(message: str, code: int = 2):
  print(f"error: {message}", file=sys.stderr)
  sys.exit(code)


from vlm_jax.flag_spelling import normalise_argv, normalise_flag  # noqa: F401,E402  (re-exported)


def _config_file(argv) -> str | None:
  for i, arg in enumerate(argv):
    if arg == "--config" and i + 1 < len(argv):
      return argv[i + 1]
    if arg.startswith("--config="):
      return arg.split("=", 1)[1]
  return None


def parse_flags(argv):
  """absl's parser with both flag spellings (dashes or underscores), and one-line errors for a missing
  config file or a bad --config override (unknown key, wrong type) instead of a traceback."""
  argv = [argv[0]] + [normalise_flag(a) for a in argv[1:]]
  spec = _config_file(argv)
  if spec is not None and not os.path.isfile(spec.partition(":")[0]):
    fail(
      f"config file {spec.partition(':')[0]!r} not found (from {os.getcwd()}); give a path such as "
      "experiments/clip_b32.py:tiny"
    )
  overrides = [a.split("=")[0] for a in argv[1:] if a.startswith("--config.")]
  if spec is None and overrides:
    fail(
      f"{overrides[0]} changes a config, but no --config is given; with --mode=eval a workdir's own "
      "config.json is used as it is: pass --config FILE (e.g. the run's recipe) to override its settings"
    )
  try:
    return FLAGS(argv)
  except flags.UnrecognizedFlagError as e:
    fail(f"unknown flag --{e.flagname}; see --help for the flags")
  except (flags.Error, AttributeError, KeyError, TypeError, ValueError) as e:
    text = str(e).replace("\\n", "\n")
    if (
      "Error whilst parsing config file" in text
    ):  # the recipe's get_config raised: its last line says why
      lines = [line.strip() for line in text.splitlines() if line.strip()]
      fail(f"config {spec}: {lines[-1]}")
    message = " ".join(re.sub(r"\\n|\\|'|\"", " ", str(e)).split())
    # Name the override the message is about, not every override on the line.
    missing = message.split()[0] if message and isinstance(e, (AttributeError, KeyError)) else None
    named = [
      o for o in overrides if o[len("--config.") :] in message or o.rsplit(".", 1)[-1] == missing
    ]
    overrides = named or overrides
    if isinstance(e, (AttributeError, KeyError)):
      message = f"unknown config key {message.split()[0]!r}" + (
        f" ({' '.join(message.split()[1:])})" if len(message.split()) > 1 else ""
      )
    fail(
      f"bad config override {' '.join(overrides)}: {message}"
      if overrides
      else f"bad flag: {message}"
    )
