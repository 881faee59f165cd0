"""Every test process sees 8 simulated CPU devices; single-device references use a 1-device mesh."""
import os

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
# Before gcsfs is imported anywhere in the test process: see tests/gcs.py.
os.environ.setdefault("GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT", "false")

import pytest  # noqa: E402

from tests.gcs import gcs  # noqa: E402,F401  (the GCS emulator fixture, for the bucket tests)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture
def cwd(tmp_path):
  """A user's working directory: the repo's experiments/ in it, as a checkout has; commands run from here
  with relative paths."""
  os.symlink(os.path.join(ROOT, "experiments"), tmp_path / "experiments")
  return tmp_path
