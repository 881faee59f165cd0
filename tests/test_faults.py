"""Faults injected where they happen for real: a second run on a workdir, a run killed without cleanup, a
checkpoint save that fails in the background, storage errors and truncated archives while streaming, two
processes building the data cache at once. Each gets a one-line answer, and nothing already written is lost."""

import io
import json
import os
import signal
import subprocess
import sys
import tarfile

import fsspec
from fsspec.implementations.local import LocalFileSystem
import pytest

from tests import helpers
from tests.test_user_paths import one_line_error, run, train
from vlm_jax.data import sources
from vlm_jax.errors import StorageError

HOLD_LOCK = (
  "import sys, time; from vlm_jax.train.workdir_lock import WorkdirLock; "
  "WorkdirLock(sys.argv[1]).acquire(); print('held', flush=True); time.sleep(600)"
)


@pytest.mark.ci  # subprocess runs: CI's second tier
def test_a_second_run_on_a_workdir_is_refused_and_a_killed_runs_lock_is_taken_over(cwd):
  holder = subprocess.Popen(
    [sys.executable, "-c", HOLD_LOCK, "runs/clip"],
    env=helpers.subprocess_env(1),
    cwd=cwd,
    stdout=subprocess.PIPE,
    text=True,
  )
  assert holder.stdout.readline().strip() == "held"
  try:
    refused = train(cwd, "runs/clip")
    assert f"is in use by another run (pid {holder.pid} on " in one_line_error(refused)
    assert not (cwd / "runs/clip/config.json").exists()
  finally:
    holder.send_signal(signal.SIGKILL)  # no cleanup: the lock file stays behind
    holder.wait()
  assert (cwd / "runs/clip/lock.json").exists()
  taken = train(cwd, "runs/clip")
  assert taken.returncode == 0, taken.stderr[-3000:]
  assert "Taking over a stale lock" in taken.stdout
  assert not (cwd / "runs/clip/lock.json").exists()


# Storage fills up (ENOSPC) when orbax renames the finished step-6 checkpoint into place, in its background thread.
FAIL_SAVE_6 = """
import orbax.checkpoint._src.path.async_path as async_path
_rename = async_path.rename
async def rename(src, dst):
  if dst.name == "6":
    raise OSError(28, "No space left on device")
  return await _rename(src, dst)
async_path.rename = rename
"""


@pytest.mark.ci  # subprocess runs: CI's second tier
def test_a_failed_background_save_stops_the_run_in_one_line_and_keeps_earlier_checkpoints(cwd):
  result = run(
    cwd,
    "--config",
    "experiments/clip_b32.py:tiny",
    "--workdir",
    "runs/clip",
    *helpers.cli_overrides(**{"train.duration": "12 steps"}),
    prelude=FAIL_SAVE_6,
  )
  last = one_line_error(result, code=1)
  assert (
    "saving a checkpoint" in last and "No space left on device" in last and "(steps [3])" in last
  )
  assert helpers.checkpoint_steps(cwd / "runs/clip") == [3]
  assert not (cwd / "runs/clip/final_eval.json").exists()
  assert "Eval at step" not in result.stdout
  resumed = train(cwd, "runs/clip", "--config.train.duration=12 steps")
  assert resumed.returncode == 0 and "Resumed from checkpoint at step 3" in resumed.stdout, (
    resumed.stderr[-3000:]
  )


def write_tar(path, count, member_bytes=700):
  with tarfile.open(path, "w") as tar:
    for i in range(count):
      for ext, data in (("png", bytes(member_bytes)), ("txt", b"caption %d" % i)):
        info = tarfile.TarInfo(f"{i:05d}.{ext}")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))


def test_a_tar_cut_at_a_block_boundary_is_counted_with_the_samples_it_lost(tmp_path):
  path = tmp_path / "00000.tar"
  write_tar(path, 50)
  whole = path.read_bytes()
  assert len(whole) % 512 == 0 and len(whole) > 512 * 50
  path.write_bytes(whole[: 512 * 5 * 8])  # each sample is 5 blocks: 8 whole samples, then nothing
  skips = sources.Skips()
  read = [s["key"] for s in sources.read_tar(str(path), skips)]
  assert read == [
    f"00000.tar:{i:05d}" for i in range(7)
  ]  # the last one read may be cut short: dropped
  assert skips.snapshot() == {
    "truncated_tar": 1
  }  # how many were lost is unknown without the shard's size
  (tmp_path / "00000_stats.json").write_text(
    json.dumps({"successes": 50})
  )  # img2dataset writes this
  skips = sources.Skips()
  assert len(list(sources.read_tar(str(path), skips))) == 7
  assert skips.snapshot() == {"truncated_tar": 1, "lost_in_truncated_tar": 43}
  # Read again (a resampled stream, a second epoch): the same shard's loss is not counted twice.
  assert len(list(sources.read_tar(str(path), skips))) == 7
  assert skips.snapshot() == {"truncated_tar": 1, "lost_in_truncated_tar": 43}
  path.write_bytes(whole)
  skips = sources.Skips()
  assert len(list(sources.read_tar(str(path), skips))) == 50 and skips.snapshot() == {}


class _FlakyFile(io.RawIOBase):
  """A file whose reads raise ConnectionResetError after `fail_after` bytes, `failures` times in all."""

  def __init__(self, path, budget):
    self._f, self._budget = open(path, "rb"), budget  # pylint: disable=consider-using-with

  def readable(self):
    return True

  def readinto(self, buffer):
    if self._budget["failures"] > 0 and self._f.tell() >= self._budget["fail_after"]:
      self._budget["failures"] -= 1
      raise ConnectionResetError(104, "Connection reset by peer")
    data = self._f.read(len(buffer))
    buffer[: len(data)] = data
    return len(data)

  def close(self):
    self._f.close()
    super().close()


class FlakyFileSystem(LocalFileSystem):
  """Local files behind a network that drops the connection: `flaky://PATH`."""

  protocol = "flaky"
  budget = {"failures": 0, "fail_after": 0}

  def _open(self, path, mode="rb", **kwargs):
    return io.BufferedReader(_FlakyFile(self._strip_protocol(path), self.budget))


def test_storage_errors_are_retried_from_where_they_stopped_then_raised_with_the_shard(
  tmp_path, monkeypatch
):
  fsspec.register_implementation("flaky", FlakyFileSystem, clobber=True)
  path = tmp_path / "00000.tar"
  write_tar(path, 30)
  clean = [s["key"] for s in sources.read_tar(str(path))]
  monkeypatch.setattr(FlakyFileSystem, "budget", {"failures": 2, "fail_after": 20_000})
  skips = sources.Skips()
  assert [s["key"] for s in sources.read_tar(f"flaky://{path}", skips, backoff_s=0.01)] == clean
  assert skips.snapshot() == {}  # a dropped connection is not a truncated tar
  monkeypatch.setattr(FlakyFileSystem, "budget", {"failures": 100, "fail_after": 20_000})
  with pytest.raises(
    StorageError, match=f"reading shard flaky://{path} failed 3 times .*Connection reset"
  ):
    list(sources.read_tar(f"flaky://{path}", skips, retries=2, backoff_s=0.01))


@pytest.mark.ci
def test_two_processes_building_the_data_cache_at_once_both_get_it(tmp_path):
  build = (
    "import sys; from vlm_jax.data import synthetic; s, t = synthetic.load(16, data_dir=sys.argv[1]); "
    "print(len(s['train']), len(s['test']))"
  )
  procs = [
    subprocess.Popen(
      [sys.executable, "-c", build, str(tmp_path / "cache")],
      env=helpers.subprocess_env(1),
      stdout=subprocess.PIPE,
      stderr=subprocess.PIPE,
      text=True,
    )
    for _ in range(2)
  ]
  outs = [p.communicate(timeout=600) for p in procs]
  for p, (out, err) in zip(procs, outs):
    assert p.returncode == 0, err[-3000:]
    assert out.split()[-2:] == ["50000", "2000"]
  assert sum("Building the embedded synthetic dataset" in out for out, _ in outs) == 1  # built once


@pytest.mark.ci  # subprocess runs: CI's second tier
def test_an_unreadable_shard_stops_the_run_in_one_line_naming_it(cwd):
  from vlm_jax.data import synthetic  # pylint: disable=import-outside-toplevel

  synthetic.write_shards(str(cwd / "shards"), 32, per_shard=16, image_size=32, log=lambda *a: None)
  os.remove(cwd / "shards" / "00001.tar")
  os.mkdir(cwd / "shards" / "00001.tar")  # there, but not readable as a file (EISDIR on every try)
  result = train(
    cwd,
    "runs/clip",
    "--config.data.name=shards",
    "--config.data.shards=shards/{00000..00001}.tar",
    f"--config.data.tokenizer_path=shards/{synthetic.TOKENIZER_FILE}",
    "--config.data.shuffle_buffer=4",
  )
  last = one_line_error(result, code=1)
  assert "reading shard" in last and "shards/00001.tar failed 5 times (IsADirectoryError" in last
