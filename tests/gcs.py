"""A real GCS-protocol server for the bucket tests: gcp-storage-emulator on 127.0.0.1 (with the download header
it lacks: tests/gcs_emulator.py), with gcsfs (through etils epath and fsspec) and tensorstore (orbax's array
store) pointed at it. Subprocesses get the same
environment, so `python -m vlm_jax.main --workdir gs://bucket/run` talks to it like to GCS."""

import os
import socket
import subprocess
import sys
import time

import pytest

BUCKET = "bucket"


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def emulator_env(port: int) -> dict:
  url = f"http://127.0.0.1:{port}"
  return {
    "STORAGE_EMULATOR_HOST": url,  # gcsfs (and google-cloud-storage)
    "TENSORSTORE_GCS_HTTP_URL": url,  # tensorstore's GCS driver: the endpoint ...
    "GOOGLE_AUTH_TOKEN_FOR_TESTING": "test",  # ... and no credentials lookup
    # gcsfs's default ("extended") filesystem asks the Storage Control API (gRPC GetStorageLayout) for
    # each bucket's type before uploads; the emulator serves only the JSON API, so that request fails
    # (a warning per upload, and a wait). The core filesystem speaks JSON only, as on most buckets.
    "GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT": "false",
  }


@pytest.fixture(scope="session")
def gcs():
  """Starts the emulator with bucket `bucket`; yields the environment that points clients at it (also set
  in this process). Everything written lives in the emulator's memory for the session."""
  port = _free_port()
  server = subprocess.Popen(
    [sys.executable, os.path.join(os.path.dirname(__file__), "gcs_emulator.py"), str(port)],
    stdout=subprocess.DEVNULL,
    stderr=subprocess.DEVNULL,
  )
  env = emulator_env(port)
  deadline = time.time() + 30
  while True:
    try:
      socket.create_connection(("127.0.0.1", port), timeout=1).close()
      break
    except OSError:
      assert server.poll() is None and time.time() < deadline, "the GCS emulator did not start"
      time.sleep(0.1)
  previous = {k: os.environ.get(k) for k in env}
  os.environ.update(env)
  try:
    yield env
  finally:
    for k, v in previous.items():
      if v is None:
        os.environ.pop(k, None)
      else:
        os.environ[k] = v
    server.terminate()
    server.wait(timeout=10)


def fs():
  """gcsfs talking to the emulator (no caching of listings, so each check sees the bucket as it is)."""
  import gcsfs  # pylint: disable=import-outside-toplevel

  return gcsfs.GCSFileSystem(
    endpoint_url=os.environ["STORAGE_EMULATOR_HOST"],
    token="anon",
    use_listings_cache=False,
    skip_instance_cache=True,
  )
