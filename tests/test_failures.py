"""Bad configs fail before training with one line; a NaN stops the run and keeps the good checkpoint."""

import importlib.util
import subprocess
import sys

import pytest

from tests import helpers
from vlm_jax.assembly.experiment import check_config
from vlm_jax.errors import ConfigError


@pytest.mark.parametrize(
  "overrides,message",
  [
    ({"model.name": "nosuch"}, "unknown model 'nosuch'; known models: clip"),
    ({"objectives.clip.name": "nosuch"}, "unknown objective 'nosuch'"),
    (
      {"data.name": "nosuch"},
      "unknown dataset 'nosuch'; known datasets: cifar10, cifar100, coco_karpathy, embedded",
    ),
    ({"evals.retrieval.name": "nosuch"}, "unknown evaluator 'nosuch'"),
    ({"data.tokenizer": "nosuch"}, "unknown tokenizer 'nosuch'"),
    ({"mesh": "data:3"}, "mesh 'data:3' needs 3 devices but 8 are available"),
    ({"mesh": "data:3,fsdp:-1"}, "do not divide the 8 devices"),
    ({"mesh": "model:8"}, "cannot read mesh 'model:8'"),
    (
      {"batch_size": 20, "mesh": "data:8"},
      "batch_size=20 does not divide over the data axes (data x fsdp = 8)",
    ),
    ({"eval_batch_size": 12, "mesh": "data:4,fsdp:2"}, "eval_batch_size=12 does not divide"),
    ({"train.duration": "10 fortnights"}, "cannot read duration '10 fortnights'"),
  ],
)
def test_bad_config_is_rejected_before_training(overrides, message):
  config = helpers.micro_config(**overrides)
  with pytest.raises(ConfigError) as error:
    check_config(config, num_devices=8, process_count=1)
  assert message in str(error.value)
  assert "\n" not in str(error.value)


@pytest.mark.parametrize(
  "override,message",
  [
    ("--config.optim.lrr=1", "unknown config key 'lrr' (Did you mean lr"),
    ("--config.mesh=data:3", "mesh 'data:3' needs 3 devices but 2 are available"),
    ("--config.model.name=vit", "unknown model 'vit'"),
  ],
)
def test_cli_errors_are_one_line(tmp_path, override, message):
  result = helpers.run_main(tmp_path, override, num_devices=2)
  assert result.returncode == 2
  last = [line for line in result.stderr.splitlines() if line.strip()][-1]
  assert last.startswith("error: ") and message in last, result.stderr[-2000:]
  assert "Traceback" not in result.stderr
  assert not (tmp_path / "checkpoints").exists()


def test_nan_stops_with_step_and_keeps_last_good_checkpoint(tmp_path):
  result = helpers.run_main(tmp_path, **{"debug.nan_at_step": 5, "train.duration": "10 steps"})
  assert result.returncode == 1
  assert "non-finite loss=nan at step 5" in result.stderr
  assert "last good checkpoint is step 3" in result.stderr
  assert helpers.checkpoint_steps(tmp_path) == [3]
  assert "Traceback" not in result.stderr


@pytest.mark.skipif(
  importlib.util.find_spec("libtpu") is None, reason="libtpu's noise needs libtpu installed"
)
def test_a_host_without_a_tpu_prints_no_libtpu_noise():
  """With libtpu installed (the test extras) and JAX_PLATFORMS unset, as a user types the command: the CLI
  runs on the CPU without the TPU plugin's start-up errors."""
  env = helpers.subprocess_env(1)
  del env["JAX_PLATFORMS"]
  result = subprocess.run(
    [sys.executable, "-m", "vlm_jax.main", "--config", helpers.TINY, "--mode=compile"],
    env=env,
    capture_output=True,
    text=True,
    timeout=300,
    cwd=helpers.ROOT,
  )
  assert result.returncode == 0, result.stderr[-3000:]
  assert "(1 devices of cpu)" in result.stdout
  noise = [line for line in result.stderr.splitlines() if "TPU" in line or "libtpu" in line]
  assert not noise, noise


def test_a_long_parameter_mismatch_is_summarised_with_a_count():
  """A whole model's paths made a ~5,000-character line: the first few of each kind, then how many more."""
  from vlm_jax.core import checkpoint  # pylint: disable=import-outside-toplevel

  shape = lambda *s: type("Shape", (), {"shape": s})()
  saved = {f"encoder/block_{i}/kernel": shape(4, 4) for i in range(40)}
  expected = {f"encoder/block_{i}/kernel": shape(4, 8) for i in range(40)}
  expected["head/kernel"] = shape(8, 2)
  with pytest.raises(ConfigError) as error:
    checkpoint.check_params_match(saved, expected, "runs/x (step 4)")
  message = str(error.value)
  assert "1 missing: head/kernel" in message
  assert "40 with other shapes: " in message and "; ... (36 more)" in message
  assert len(message) < 700 and "\n" not in message
