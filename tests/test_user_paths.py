"""The CLI as users type it: relative paths from the directory they work in, dashed flags, commands run one
after another on one workdir, and the faults they meet, each answered in one line before anything is
written."""

import json
import os
import subprocess
import sys

import pytest

from tests import helpers

TINY = "experiments/clip_b32.py:tiny"


def run(cwd, *args, module="vlm_jax.main", timeout=300, prelude=""):
  command = (
    [sys.executable, "-m", module, *args]
    if not prelude
    else [
      sys.executable,
      "-c",
      f"{prelude}\nimport runpy, sys\nsys.argv = {[module, *args]!r}\n"
      f"runpy.run_module({module!r}, run_name='__main__')",
    ]
  )
  return subprocess.run(
    command, env=helpers.subprocess_env(1), capture_output=True, text=True, timeout=timeout, cwd=cwd
  )


def train(cwd, workdir, *extra):
  return run(cwd, "--config", TINY, "--workdir", workdir, *helpers.cli_overrides(), *extra)


def one_line_error(result, code=2):
  assert result.returncode == code, result.stdout[-2000:] + result.stderr[-2000:]
  assert "Traceback" not in result.stderr, result.stderr[-3000:]
  last = [line for line in result.stderr.splitlines() if line.strip()][-1]
  assert last.startswith("error: "), result.stderr[-2000:]
  return last


@pytest.mark.ci  # four commands, ~30 s: CI's second tier
def test_relative_workdir_from_training_to_eval_harness_and_load(cwd):
  """One workdir, the commands one after another as a user types them, and the mistakes they make on it."""
  first = train(cwd, "runs/clip")
  assert first.returncode == 0, first.stderr[-3000:]
  assert f"are in {cwd / 'runs' / 'clip'}" in first.stdout  # where the results are, said once
  assert "Compiling the train step" in first.stdout
  again = train(cwd, "runs/clip")
  assert again.returncode == 0 and "is a finished run (6 of 6 steps)" in again.stdout, again.stderr[
    -2000:
  ]
  assert "Compiled" not in again.stdout
  evaluated = run(cwd, "--workdir", "runs/clip", "--mode=eval")
  assert evaluated.returncode == 0, evaluated.stderr[-3000:]
  record = cwd / "runs/clip/eval_records/step_6/embedded_64px/zero_shot.json"
  assert json.loads(record.read_text())["step"] == 6
  harness = run(
    cwd,
    "--workdir",
    "runs/clip",
    "--all-checkpoints",
    "--tasks",
    "zero_shot",
    module="vlm_jax.evaluate",
  )
  assert harness.returncode == 0, harness.stderr[-3000:]
  assert sorted(os.listdir(cwd / "runs/clip/eval_records")) == [
    "step_3",
    "step_6",
  ]  # every checkpoint
  load = subprocess.run(
    [sys.executable, "-c", "import vlm_jax; m = vlm_jax.load('runs/clip'); print(m.step)"],
    env=helpers.subprocess_env(1),
    capture_output=True,
    text=True,
    timeout=300,
    cwd=cwd,
  )
  assert load.returncode == 0 and load.stdout.split()[-1] == "6", load.stderr[-3000:]

  # Resuming with another model names the paths and leaves the workdir as it was.
  saved = (cwd / "runs/clip/config.json").read_bytes()
  changed = train(cwd, "runs/clip", "--config.model.embed_dim=48", "--config.train.duration=9")
  assert "image_proj/kernel: checkpoint (64, 32) vs model (64, 48)" in one_line_error(changed)
  assert (cwd / "runs/clip/config.json").read_bytes() == saved
  # A start that fails (a LiT tower from a run of another shape) leaves no half-made workdir.
  lit = run(
    cwd,
    "--config",
    "experiments/lit_b16.py:tiny",
    "--workdir",
    "runs/lit",
    "--config.init_from.workdir=runs/clip",
  )
  assert "does not fit the model" in one_line_error(lit)
  assert not (cwd / "runs" / "lit").exists()


@pytest.mark.ci  # five CLI starts: CI's second tier
@pytest.mark.parametrize(
  "args,message",
  [
    (
      ["--config", "experiments/nosuch.py:tiny", "--workdir", "runs/x"],
      "config file 'experiments/nosuch.py' not found",
    ),
    (["--config", TINY, "--workdir", "notes.txt"], "is a file; give a folder"),
    (
      ["--config", TINY, "--workdir", "/proc/vlm_jax_run"],
      "cannot write to workdir /proc/vlm_jax_run",
    ),
    (
      ["--config", TINY, "--workdir", "runs/x", "--all-checkpoint"],
      "unknown flag --all_checkpoint",
    ),
    (["--workdir", "runs/nothing", "--mode=eval"], "has no config.json"),
  ],
)
def test_bad_input_is_one_line_before_anything_is_written(cwd, args, message):
  (cwd / "notes.txt").write_text("not a workdir")
  assert message in one_line_error(run(cwd, *args))
  assert not (cwd / "runs").exists()


@pytest.mark.ci
def test_a_bucket_workdir_without_gcsfs_says_how_to_install_it(cwd):
  result = run(
    cwd,
    "--config",
    TINY,
    "--workdir",
    "gs://bucket/run",
    prelude="import sys; sys.modules['gcsfs'] = None",
  )
  assert "pip install gcsfs" in one_line_error(result)


def test_dashed_and_underscored_flags_are_the_same_flag():
  from vlm_jax import flag_spelling  # pylint: disable=import-outside-toplevel

  assert flag_spelling.normalise_argv(
    [
      "--all-checkpoints",
      "--dry-run",
      "--step=-1",
      "--config.optim.lr=1e-3",
      "pos-arg",
      "--per-shard=3",
    ]
  ) == [
    "--all_checkpoints",
    "--dry_run",
    "--step=-1",
    "--config.optim.lr=1e-3",
    "pos-arg",
    "--per_shard=3",
  ]


def test_captions_cut_by_max_len_are_said_once(tmp_path):
  from vlm_jax.train import trainer  # pylint: disable=import-outside-toplevel

  logs = []
  trainer.train(
    helpers.micro_config(**{"model.text.max_len": 5, "evals": {}, "train.duration": "2 steps"}),
    str(tmp_path / "run"),
    log=logs.append,
  )
  notes = [line for line in logs if "were longer than model.text.max_len=5 tokens" in line]
  assert len(notes) == 1, logs
