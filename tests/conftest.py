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


# The two longest tests of CI's second run (`-m "ci or slow"`): the docs' commands (about 10 minutes on 2
# cores, two blocks at a time) and the tiny CLIP recipe as shipped (about 5). pytest-xdist's worksteal
# scheduler (pytest.ini) gives each of the two workers half of the list in order, so the first starts at
# the head of the list and the second in the middle: both start at once, and the other tests fill in
# around them instead of the run waiting on one of them last.
LONGEST = (
  "tests/test_readme.py::test_every_command_in_the_docs_runs_as_typed",
  "tests/test_end_to_end.py::test_tiny_clip_config_as_shipped",
)


@pytest.hookimpl(trylast=True)  # after -m has deselected: the middle of what runs
def pytest_collection_modifyitems(items):
  items.sort(key=lambda item: item.nodeid != LONGEST[0])  # stable: the rest keep their order
  second = next((i for i, item in enumerate(items) if item.nodeid == LONGEST[1]), None)
  if second is not None:
    items.insert(len(items) // 2, items.pop(second))
