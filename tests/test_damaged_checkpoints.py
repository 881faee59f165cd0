"""A damaged latest checkpoint (a full disk, a cut copy) is moved aside in one line and the run resumes from
the newest intact one, to exactly the parameters of an uninterrupted run; through the CLI, as users resume."""

import os
import re
import shutil

import numpy as np
import pytest

from tests import helpers

# 8 steps, checkpoints at 2, 4 and 6: the first run stops at 6 (train.max_steps), the resume runs to 8.
STEPS = {
  "train.duration": "8 steps",
  "train.checkpoint_every": "2 steps",
  "train.log_every": "2 steps",
}


def _largest_array_file(step_dir):
  files = [os.path.join(d, f) for d, _, names in os.walk(step_dir / "state") for f in names]
  return max((f for f in files if f"{os.sep}d{os.sep}" in f), key=os.path.getsize)


def _truncate(step_dir):
  path = _largest_array_file(step_dir)
  os.truncate(path, os.path.getsize(path) // 2)


def _corrupt(step_dir):
  path = _largest_array_file(step_dir)
  data = bytearray(open(path, "rb").read())
  for i in range(100, len(data), 997):
    data[i] ^= 0xFF
  open(path, "wb").write(bytes(data))


def _delete_arrays(step_dir):
  os.remove(_largest_array_file(step_dir))


def _delete_metadata(step_dir):
  os.remove(step_dir / "state" / "_METADATA")


def _corrupt_data_position(step_dir):
  (step_dir / "data" / "process_0-of-1.json").write_text('{"next_index": ')


def _tracebacks(stderr: str) -> set:
  """The exception types of the tracebacks in `stderr`, but one known noise: after orbax's restore of a
  damaged checkpoint fails, tensorstore reads still in flight call back into the event loop orbax has
  closed and print 'RuntimeError: Event loop is closed' from their threads, interleaved (nothing is lost).
  The unawaited read coroutines' own errors, which Python printed when it collected them, are dropped by
  vlm_jax.core.checkpoint and must not appear."""
  if "Traceback" not in stderr:
    return set()
  if "Event loop is closed" not in stderr:
    return {"Traceback"}
  noise = stderr.replace("RuntimeError", " ")
  return set(re.findall(r"\b(\w*(?:Error|Exception))\b", noise))


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
  root = tmp_path_factory.mktemp("damaged")
  reference, stopped = root / "reference", root / "stopped"
  for workdir, extra in ((reference, {}), (stopped, {"train.max_steps": 6})):
    result = helpers.run_main(workdir, **STEPS, **extra)
    assert result.returncode == 0, result.stderr[-3000:]
  assert helpers.checkpoint_steps(stopped) == [2, 4, 6]
  return helpers.load_params(reference), stopped


@pytest.mark.parametrize(
  "damage",
  # One kind of damage in the fast tier, the others in CI's second (each resumes a run).
  [_truncate]
  + [
    pytest.param(damage, marks=pytest.mark.ci)
    for damage in (_corrupt, _delete_arrays, _delete_metadata, _corrupt_data_position)
  ],
  ids=[
    "truncated",
    "corrupted",
    "array_file_deleted",
    "metadata_deleted",
    "data_position_corrupted",
  ],
)
def test_a_damaged_latest_checkpoint_is_set_aside_and_the_run_resumes_from_the_one_before(
  runs, tmp_path, damage
):
  reference, stopped = runs
  workdir = tmp_path / "run"
  shutil.copytree(stopped, workdir)
  damage(workdir / "checkpoints" / "6")
  result = helpers.run_main(workdir, **STEPS)
  assert result.returncode == 0, result.stderr[-3000:]
  assert not _tracebacks(result.stderr), result.stderr[-3000:]
  [line] = [line for line in result.stdout.splitlines() if "cannot be read" in line]
  assert line.startswith(f"Checkpoint 6 in {workdir / 'checkpoints'} cannot be read (")
  assert line.endswith(
    f"moved it to {workdir / 'checkpoints' / '6.corrupt'} and trying the one before"
  )
  assert "Resumed from checkpoint at step 4" in result.stdout
  assert (workdir / "checkpoints" / "6.corrupt" / "state").is_dir()  # kept for a person to inspect
  params = helpers.load_params(workdir)
  assert params.keys() == reference.keys()
  for path in reference:
    np.testing.assert_array_equal(params[path], reference[path], err_msg=path)


def test_when_no_checkpoint_can_be_read_nothing_is_written_and_the_error_is_one_line(
  runs, tmp_path
):
  _, stopped = runs
  workdir = tmp_path / "run"
  shutil.copytree(stopped, workdir)
  config = (workdir / "config.json").read_text()
  for step in (2, 4, 6):
    _delete_metadata(workdir / "checkpoints" / str(step))
  result = helpers.run_main(workdir, **STEPS, **{"optim.lr": 1e-3})
  assert result.returncode == 2, result.stderr[-3000:]
  [error] = [line for line in result.stderr.splitlines() if "error" in line.lower()]
  assert f"no checkpoint in {workdir / 'checkpoints'} can be read" in error
  assert sorted(os.listdir(workdir / "checkpoints")) == ["2.corrupt", "4.corrupt", "6.corrupt"]
  assert (workdir / "config.json").read_text() == config  # not rewritten by the failed attempt
