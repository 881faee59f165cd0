"""Every test process sees 8 simulated CPU devices; single-device references use a 1-device mesh."""

import os

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
# Before gcsfs is imported anywhere in the test process: see tests/gcs.py.
os.environ.setdefault("GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT", "false")
# Topology compiles in two test workers at once (no TPU is used): see vlm_jax/main.py.
os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
# The persistent compilation cache the entry points use (vlm_jax/cli.py), for this process and every
# subprocess, and for the small compiles of micro models too: tests compile the same steps many times.
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", os.path.expanduser("~/.cache/vlm_jax/xla"))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")

import pytest  # noqa: E402

from tests.gcs import gcs  # noqa: E402,F401  (the GCS emulator fixture, for the bucket tests)
import vlm_jax.builtins  # noqa: E402,F401  (the registries, filled as every entry point fills them)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture
def cwd(tmp_path):
  """A user's working directory: the repo's experiments/ in it, as a checkout has; commands run from here
  with relative paths."""
  os.symlink(os.path.join(ROOT, "experiments"), tmp_path / "experiments")
  return tmp_path


# The docs' commands (about 13 minutes of CI's second tier on 2 cores) start first; with --dist worksteal
# (pytest.ini) the other worker takes every other test meanwhile, instead of the tier waiting on it last.
LONGEST_FIRST = "tests/test_readme.py::test_every_command_in_the_docs_runs_as_typed"


def pytest_collection_modifyitems(items):
  items.sort(key=lambda item: item.nodeid != LONGEST_FIRST)  # stable: the rest keep their order
