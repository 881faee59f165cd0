"""Interrupted runs (SIGTERM, Ctrl-C, SIGKILL) resume to exactly the parameters of an uninterrupted run."""

import os
import signal
import subprocess
import time

import numpy as np
import pytest

from tests import helpers
from vlm_jax.train import trainer

# A reference run and interrupted training subprocesses (about 1 minute with a warm compilation cache, 2
# with a cold one): CI's second tier, which has room beside the docs' test, keeps the fast tier under 10.
pytestmark = pytest.mark.ci

LONG = {
  "train.duration": "120 steps",
  "train.checkpoint_every": "20 steps",
  "train.log_every": "1 steps",
}


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
  workdir = tmp_path_factory.mktemp("uninterrupted")
  result = helpers.run_main(workdir, **LONG)
  assert result.returncode == 0, result.stderr[-3000:]
  return helpers.load_params(workdir)


# As from a terminal: pytest-xdist's workers ignore SIGINT and their children inherit that (Python then
# installs no KeyboardInterrupt handler), so the child puts Python's handler back before running main.
# (A preexec_fn would do it in the forked child, which is unsafe in a process with threads.)
AS_FROM_A_TERMINAL = (
  "import runpy, signal; signal.signal(signal.SIGINT, signal.default_int_handler); "
  "runpy.run_module('vlm_jax.main', run_name='__main__', alter_sys=True)"
)


def _start(workdir):
  python, module_flag, module, *args = helpers.main_command(workdir, **LONG)
  assert (module_flag, module) == ("-m", "vlm_jax.main")
  return subprocess.Popen(
    [python, "-c", AS_FROM_A_TERMINAL, *args],
    env=helpers.subprocess_env(2),
    stdout=subprocess.PIPE,
    stderr=subprocess.PIPE,
    text=True,
    cwd=helpers.ROOT,
  )


def _wait_for(predicate, process, timeout=240):
  deadline = time.time() + timeout
  while not predicate():
    assert process.poll() is None, "the run ended before it could be interrupted"
    assert time.time() < deadline, "timed out waiting for the run"
    time.sleep(0.05)


def _assert_identical(params, reference):
  assert params.keys() == reference.keys()
  for path in reference:
    np.testing.assert_array_equal(params[path], reference[path], err_msg=path)


def _after_three_steps(workdir, process):
  metrics = workdir / "metrics.jsonl"
  _wait_for(lambda: metrics.exists() and metrics.read_text().count("\n") >= 3, process)


def _stop_with(sig, workdir):
  """Starts the long run, sends `sig` after three steps; returns the step it stopped at with a save."""
  process = _start(workdir)
  _after_three_steps(workdir, process)
  process.send_signal(sig)
  out, err = process.communicate(timeout=120)
  assert process.returncode == 0, err[-3000:]
  assert "Stopping at step" in out and "Traceback" not in err
  stopped_at = helpers.checkpoint_steps(workdir)[-1]
  assert 0 < stopped_at < 120 and f"Stopping at step {stopped_at} with a checkpoint saved" in out
  return stopped_at


def test_ctrl_c_saves_and_exits_cleanly_as_sigterm_does(tmp_path):
  """A person's Ctrl-C: the same saved stop as SIGTERM's (whose resume is checked below)."""
  _stop_with(signal.SIGINT, tmp_path)


def test_sigterm_saves_exits_cleanly_and_resumes_bit_identical(tmp_path, reference):
  stopped_at = _stop_with(signal.SIGTERM, tmp_path)
  result = helpers.run_main(tmp_path, **LONG)
  assert result.returncode == 0, result.stderr[-3000:]
  assert f"Resumed from checkpoint at step {stopped_at}" in result.stdout
  _assert_identical(helpers.load_params(tmp_path), reference)
  steps = [r["step"] for r in helpers.metrics_lib.read_metrics(tmp_path) if "train/loss" in r]
  assert steps == sorted(set(steps)) and steps[-1] == 120  # no step logged twice after the resume


def test_a_second_ctrl_c_stops_at_once():
  """The handler the loop installs, with real signals: the first Ctrl-C asks for a saved stop, the second
  raises KeyboardInterrupt (main.py turns it into one line and exit 130)."""
  # Under pytest-xdist: the worker's own handler, not Python's default.
  before = signal.getsignal(signal.SIGINT)
  preemption = trainer._Preemption()  # pylint: disable=protected-access
  try:
    signal.raise_signal(signal.SIGINT)
    assert preemption.requested and preemption.should_stop(1)
    with pytest.raises(KeyboardInterrupt):
      signal.raise_signal(signal.SIGINT)
  finally:
    preemption.restore()
  assert signal.getsignal(signal.SIGINT) is before


def test_ctrl_c_before_training_is_one_line_and_keeps_the_checkpoints(tmp_path):
  """Ctrl-C while a resumed run compiles (no handler yet): exit 130, one line, checkpoints intact."""
  process = _start(tmp_path)
  _wait_for(lambda: len(helpers.checkpoint_steps(tmp_path)) >= 2, process)
  process.send_signal(signal.SIGTERM)
  process.communicate(timeout=120)
  saved = helpers.checkpoint_steps(tmp_path)
  process = _start(tmp_path)
  log = []
  _wait_for(lambda: log.append(process.stdout.readline()) or "Compiling" in log[-1], process)
  process.send_signal(signal.SIGINT)
  out, err = process.communicate(timeout=120)
  assert process.returncode == 130, err[-3000:]
  assert "Stopped by Ctrl-C without saving" in err and "Traceback" not in err, err[-3000:]
  assert helpers.checkpoint_steps(tmp_path) == saved


def test_sigkill_at_any_time_resumes_from_last_complete_checkpoint(tmp_path, reference):
  process = _start(tmp_path)
  _wait_for(lambda: len(helpers.checkpoint_steps(tmp_path)) >= 1, process)
  process.kill()  # possibly in the middle of writing the next checkpoint
  process.communicate(timeout=60)
  # A save cut short leaves a temporary directory; restore must ignore it.
  os.makedirs(tmp_path / "checkpoints" / "100.orbax-checkpoint-tmp-1234" / "state", exist_ok=True)
  result = helpers.run_main(tmp_path, **LONG)
  assert result.returncode == 0, result.stderr[-3000:]
  _assert_identical(helpers.load_params(tmp_path), reference)
