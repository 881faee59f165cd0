"""Two processes on 127.0.0.1 (2 devices each) train the same steps as one process with 4 devices."""

import socket
import subprocess

import numpy as np
import pytest

from tests import helpers


def _free_port():
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


@pytest.mark.ci  # two training processes, ~30 s: CI's second tier
def test_two_processes_train_like_one(tmp_path):
  overrides = {"mesh": "data:2,fsdp:2", "optim.eps": 1e-3}  # eps: see test_sharded_training
  single = helpers.run_main(tmp_path / "single", num_devices=4, **overrides)
  assert single.returncode == 0, single.stderr[-3000:]

  port = _free_port()
  workdir = tmp_path / "multi"
  procs = [
    subprocess.Popen(
      helpers.main_command(
        workdir,
        f"--coordinator_address=127.0.0.1:{port}",
        "--num_processes=2",
        f"--process_id={i}",
        **overrides,
      ),
      env=helpers.subprocess_env(2),
      stdout=subprocess.PIPE,
      stderr=subprocess.PIPE,
      text=True,
      cwd=helpers.ROOT,
    )
    for i in range(2)
  ]
  outputs = [p.communicate(timeout=300) for p in procs]
  for p, (_, err) in zip(procs, outputs):
    assert p.returncode == 0, err[-3000:]
  assert "2 process(es)" in outputs[0][0]
  # Only process 0 logs (process 1's stdout holds only gloo's own connection messages).
  ours = ("Data:", "Mesh:", "Compiled", "step ", "Eval at", "eval/")
  assert not [l for l in outputs[1][0].splitlines() if l.startswith(ours)]

  ref, got = helpers.load_params(tmp_path / "single"), helpers.load_params(workdir)
  assert ref.keys() == got.keys()
  for path in ref:
    np.testing.assert_allclose(got[path], ref[path], rtol=1e-4, atol=2e-5, err_msg=path)
  losses = lambda w: [
    r["train/loss"] for r in helpers.metrics_lib.read_metrics(w) if "train/loss" in r
  ]
  np.testing.assert_allclose(losses(workdir), losses(tmp_path / "single"), rtol=1e-5)


@pytest.mark.ci
def test_sigterm_to_one_of_two_processes_saves_one_consistent_checkpoint_and_both_resume(tmp_path):
  """JAX's preemption service carries the signal to the other process; both save the same step and stop."""
  import signal  # pylint: disable=import-outside-toplevel
  import time  # pylint: disable=import-outside-toplevel

  overrides = {
    "mesh": "data:2,fsdp:2",
    "train.duration": "60 steps",
    "train.checkpoint_every": "1000 steps",
    "train.log_every": "1 steps",
  }
  workdir = tmp_path / "multi"

  def start(attempt):
    port = _free_port()
    logs = [
      tmp_path / f"{attempt}_{i}.log" for i in range(2)
    ]  # files, not pipes: nobody reads them meanwhile
    procs = [
      subprocess.Popen(
        helpers.main_command(
          workdir,
          f"--coordinator_address=127.0.0.1:{port}",
          "--num_processes=2",
          f"--process_id={i}",
          **overrides,
        ),
        env=helpers.subprocess_env(2),
        stdout=open(logs[i], "w"),
        stderr=subprocess.STDOUT,
        cwd=helpers.ROOT,
      )
      for i in range(2)
    ]
    return procs, logs

  def finish(procs, logs, timeout):
    for p, log in zip(procs, logs):
      p.wait(timeout=timeout)
      assert p.returncode == 0, log.read_text()[-3000:]
    return logs[0].read_text()

  procs, logs = start("first")
  metrics = workdir / "metrics.jsonl"
  deadline = time.time() + 300
  while not (metrics.exists() and metrics.read_text().count("\n") >= 3):
    assert all(p.poll() is None for p in procs) and time.time() < deadline, logs[0].read_text()[
      -3000:
    ]
    time.sleep(0.1)
  procs[1].send_signal(signal.SIGTERM)  # only the second process is told
  out = finish(procs, logs, 300)
  steps = helpers.checkpoint_steps(workdir)
  assert len(steps) == 1 and 0 < steps[0] < 60, steps
  assert f"Stopping at step {steps[0]}" in out
  out = finish(*start("again"), 600)
  assert f"Resumed from checkpoint at step {steps[0]}" in out
  logged = [r["step"] for r in helpers.metrics_lib.read_metrics(workdir) if "train/loss" in r]
  assert logged == list(range(1, 61))
