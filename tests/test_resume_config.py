"""A resume with changed settings, through the CLI: every difference is listed; those that change the
training are refused unless --allow-config-change, and then recorded with the step in config_history.jsonl
(config.json becomes the new config, the history keeps what the first steps used)."""

import json
import shutil

import pytest

from tests import helpers

STEPS = {"train.duration": "8 steps", "train.checkpoint_every": "2 steps"}


@pytest.fixture(scope="module")
def stopped(tmp_path_factory):
  workdir = tmp_path_factory.mktemp("resume_config") / "run"
  result = helpers.run_main(workdir, **STEPS, **{"train.max_steps": 4})
  assert result.returncode == 0, result.stderr[-3000:]
  return workdir


def _copy(stopped, tmp_path):
  workdir = tmp_path / "run"
  shutil.copytree(stopped, workdir)
  return workdir


def test_a_training_change_is_refused_in_one_line_and_nothing_is_written(stopped, tmp_path):
  workdir = _copy(stopped, tmp_path)
  config = (workdir / "config.json").read_text()
  lr = json.loads(config)["optim"]["lr"]
  result = helpers.run_main(workdir, **STEPS, **{"optim.lr": 0.0123, "batch_size": 32})
  assert result.returncode == 2, result.stderr[-3000:]
  [error] = [line for line in result.stderr.splitlines() if line.startswith("error:")]
  assert f"batch_size 16 -> 32, optim.lr {lr!r} -> 0.0123" in error
  assert "--allow_config_change" in error and "Traceback" not in result.stderr
  assert (workdir / "config.json").read_text() == config
  assert not (workdir / "config_history.jsonl").exists()
  assert helpers.checkpoint_steps(workdir) == [2, 4]


def test_allowed_changes_are_recorded_with_the_step(stopped, tmp_path):
  workdir = _copy(stopped, tmp_path)
  lr = json.loads((workdir / "config.json").read_text())["optim"]["lr"]
  result = helpers.run_main(workdir, "--allow-config-change", **STEPS, **{"optim.lr": 0.0123})
  assert result.returncode == 0, result.stderr[-3000:]
  assert f"Resuming with changed settings: optim.lr {lr!r} -> 0.0123, train.max_steps 4 -> 0" in (
    result.stdout
  )
  history = [
    json.loads(line) for line in (workdir / "config_history.jsonl").read_text().splitlines()
  ]
  assert history == [{"step": 4, "changes": {"optim.lr": [lr, 0.0123], "train.max_steps": [4, 0]}}]
  assert json.loads((workdir / "config.json").read_text())["optim"]["lr"] == 0.0123
  assert helpers.checkpoint_steps(workdir)[-1] == 8


def test_settings_that_do_not_change_the_training_are_listed_and_recorded_without_the_flag(
  stopped, tmp_path
):
  workdir = _copy(stopped, tmp_path)
  result = helpers.run_main(workdir, **STEPS, **{"train.log_every": "1 steps"})
  assert result.returncode == 0, result.stderr[-3000:]
  assert "Resuming with changed settings: train.log_every" in result.stdout
  [record] = [
    json.loads(line) for line in (workdir / "config_history.jsonl").read_text().splitlines()
  ]
  assert record["step"] == 4 and set(record["changes"]) == {"train.log_every", "train.max_steps"}
