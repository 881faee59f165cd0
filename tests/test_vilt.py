"""ViLT trains: MLM and ITM losses fall and held-out ITM beats chance; objectives mix across families."""

import json

import numpy as np
import pytest

from tests import helpers
from vlm_jax.train import metrics as metrics_lib
from vlm_jax.train import trainer


def _losses(workdir, name):
  return [
    r[f"train/{name}"] for r in metrics_lib.read_metrics(str(workdir)) if f"train/{name}" in r
  ]


def test_short_vilt_run_learns(tmp_path):
  """100 micro steps: MLM learns (ITM needs a few hundred steps to leave chance: test_vilt_tiny_as_shipped)."""
  config = helpers.micro_config(
    helpers.VILT_TINY,
    batch_size=64,
    **{
      "train.duration": "100 steps",
      "train.log_every": "25 steps",
      "train.checkpoint_every": "0 steps",
      "optim.lr": 2e-3,
      "optim.warmup": "10 steps",
      "evals.itm_retrieval.limit": 16,
      "evals.mlm_accuracy.limit": 128,
    },
  )
  final = trainer.train(config, str(tmp_path), log=lambda *a: None)
  mlm = _losses(tmp_path, "mlm_loss")
  assert mlm[-1] < 0.5 * mlm[0]
  assert final["eval/mlm/accuracy"] > 0.3, final  # held-out captions
  assert (
    _losses(tmp_path, "itm_hard_negatives")[-1] > 0
    and np.isfinite(_losses(tmp_path, "itm_loss")).all()
  )


@pytest.mark.recipes
def test_vilt_tiny_as_shipped(tmp_path):
  """The tiny recipe (about 6 minutes): ITM with mixed hard negatives beats chance on held-out pairs."""
  import subprocess  # pylint: disable=import-outside-toplevel

  result = subprocess.run(
    [
      helpers.sys.executable,
      "-m",
      "vlm_jax.main",
      "--config",
      helpers.VILT_TINY,
      "--workdir",
      str(tmp_path),
    ],
    env=helpers.subprocess_env(1),
    capture_output=True,
    text=True,
    timeout=1200,
    cwd=helpers.ROOT,
  )
  assert result.returncode == 0, result.stderr[-3000:]
  final = json.loads((tmp_path / "final_eval.json").read_text())
  assert final["eval/itm/pair_auc"] > 0.6, final
  assert (
    final["eval/itm_retrieval/i2t_r10"] > 2 * 10 / 64
    and final["eval/itm_retrieval/t2i_r10"] > 2 * 10 / 64
  )
  assert _losses(tmp_path, "itm_loss")[-1] < 0.6 * _losses(tmp_path, "itm_loss")[0]


def test_clip_plus_mlm_on_the_text_tower_through_config_alone(tmp_path):
  config = helpers.micro_config(
    **{
      "model.text_mlm_head": True,
      "model.text.causal": False,
      "objectives.mlm": {
        "weight": 0.5,
        "method": "text_mlm_logits",
        "rate": 0.15,
        "whole_word": True,
      },
      "train.duration": "30 steps",
      "train.log_every": "5 steps",
      "train.checkpoint_every": "0 steps",
      "optim.lr": 2e-3,
      "batch_size": 32,
    }
  )
  trainer.train(config, str(tmp_path), log=lambda *a: None)
  records = [r for r in metrics_lib.read_metrics(str(tmp_path)) if "train/loss" in r]
  for r in records:
    np.testing.assert_allclose(
      r["train/loss"], r["train/clip_loss"] + 0.5 * r["train/mlm_loss"], rtol=1e-5
    )
  assert records[-1]["train/mlm_loss"] < 0.7 * records[0]["train/mlm_loss"]
