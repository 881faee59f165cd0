"""Staged recipes: stages chain through their checkpoints, frozen groups stay bit-identical, reruns resume."""

import os

import jax
import numpy as np
import pytest

from tests import helpers
import vlm_jax
from vlm_jax.core import checkpoint
from vlm_jax.errors import ConfigError
from vlm_jax.train import stages, trainer

LLAVA_TINY = os.path.join(helpers.ROOT, "experiments", "llava_stages.py") + ":tiny"


def micro_stages(tmp_path):
  config = helpers.micro_config(
    LLAVA_TINY,
    batch_size=16,
    **{
      "train.log_every": "2 steps",
      "train.checkpoint_every": "2 steps",
      "optim.warmup": "1 steps",
      "optim.lr": 3e-3,
    },
  )
  with config.unlocked():
    config.evals = {}  # the evaluators have their own tests; stages only need to train
    config.model.image.update(pool="cls", act="quick_gelu")
    for stage in config.stages:
      stage["overrides"]["train.duration"] = "4 steps"
  return config


def params_of(workdir):
  return {
    p: np.asarray(v) for p, v in checkpoint.flat_paths(vlm_jax.load(str(workdir)).params).items()
  }


def changed(before, after, regex):
  import re

  paths = [p for p in before if re.fullmatch(regex, p)]
  return {p: not np.array_equal(before[p], after[p]) for p in paths}


@pytest.mark.ci  # three stage runs, ~45 s: CI's second tier
def test_stages_chain_freeze_and_resume(tmp_path):
  config = micro_stages(tmp_path)
  logs = []
  stages.run(config, str(tmp_path), train=trainer.train, log=logs.append)
  dirs = [d for d, _ in stages.stage_configs(config, str(tmp_path))]
  assert [os.path.basename(d) for d in dirs] == ["stage0_lm", "stage1_projector", "stage2_finetune"]
  for d in dirs:
    assert os.path.exists(os.path.join(d, "final_eval.json"))
  lm, projector, finetune = (params_of(d) for d in dirs)
  # Stage 1 started from stage 0's last checkpoint and trained the projector only: everything else is
  # bit-identical to the end of stage 0, the projector moved.
  assert not any(changed(lm, projector, r"(?!projector/).*").values())
  assert all(changed(lm, projector, r"projector/.*").values())
  # Stage 2 trained projector + LM from stage 1's end; the image tower never moved, from its start in stage 0.
  assert all(changed(projector, finetune, r"lm_decoder/.*kernel").values())
  assert not any(changed(projector, finetune, r"image_encoder/.*").values())
  # Stage 0 trained the LM and nothing else (its image tower and projector are still the initial ones).
  configs = [c for _, c in stages.stage_configs(config, str(tmp_path))]
  first = trainer.Experiment(configs[0], log=lambda *a: None)
  init = {
    p: np.asarray(v)
    for p, v in checkpoint.flat_paths(jax.device_get(first.init_state().params)).items()
  }
  assert not any(changed(init, lm, r"(image_encoder|projector)/.*").values())
  assert all(changed(init, lm, r"lm_decoder/.*kernel").values())
  # Frozen groups have no optimizer state: stage 1's Adam moments cover the projector only.
  state = trainer.Experiment(configs[1], log=lambda *a: None).init_state(apply_init_from=False)
  moments = sum(x.size for x in jax.tree.leaves(state.opt_state) if x.ndim > 0)
  assert moments == 2 * sum(v.size for p, v in projector.items() if p.startswith("projector/"))
  # A rerun skips the finished stages; an interrupted last stage resumes from its own checkpoint.
  os.remove(os.path.join(dirs[2], "final_eval.json"))
  logs = []
  stages.run(config, str(tmp_path), train=trainer.train, log=logs.append)
  assert sum("skipping" in line for line in logs) == 2
  assert any(line.startswith("Resumed from checkpoint at step 4") for line in logs), logs


def test_stage_errors_are_one_line_config_errors(tmp_path):
  config = micro_stages(tmp_path)
  with config.unlocked():
    config.stages[0]["init_from"] = "previous"
  with pytest.raises(ConfigError, match="first stage"):
    stages.stage_configs(config, str(tmp_path))
  with config.unlocked():
    config.stages = [dict(name="x", trainabel="lm_.*")]
  with pytest.raises(ConfigError, match="trainabel"):
    stages.stage_configs(config, str(tmp_path))
  with config.unlocked():
    config.stages = [dict(name="x", overrides={"optim.nonexistent.lr": 1.0})]
  with pytest.raises(ConfigError, match="nonexistent"):
    stages.stage_configs(config, str(tmp_path))


def test_a_stopped_stage_ends_the_chain(tmp_path):
  """SIGTERM or Ctrl-C inside a stage (trainer.Stopped, after its checkpoint) must not start the next stage
  from the unfinished one."""
  config = micro_stages(tmp_path)
  started = []

  def train(c, workdir, log):
    del c, log
    started.append(os.path.basename(workdir))
    if len(started) == 2:
      raise trainer.Stopped("Stopping at step 2 with a checkpoint saved")
    os.makedirs(workdir, exist_ok=True)
    with open(os.path.join(workdir, "final_eval.json"), "w") as f:
      f.write('{"step": 4}')
    return {}

  with pytest.raises(trainer.Stopped):
    stages.run(config, str(tmp_path), train=train, log=lambda *a: None)
  assert started == ["stage0_lm", "stage1_projector"]
