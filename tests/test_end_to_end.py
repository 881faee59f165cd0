"""The tiny CLIP config learns the embedded data: loss falls, zero-shot beats chance 3x, retrieval works."""

import json

import pytest

from tests import helpers


def _run_tiny(workdir, *overrides):
  import subprocess  # pylint: disable=import-outside-toplevel

  command = [
    helpers.sys.executable,
    "-m",
    "vlm_jax.main",
    "--config",
    helpers.TINY,
    "--workdir",
    str(workdir),
    *overrides,
  ]
  result = subprocess.run(
    command,
    env=helpers.subprocess_env(1),
    capture_output=True,
    text=True,
    timeout=900,
    cwd=helpers.ROOT,
  )
  assert result.returncode == 0, result.stderr[-3000:]
  return result


def _check_learned(workdir, result):
  lines = result.stdout.splitlines()
  data_line = next(i for i, line in enumerate(lines) if line.startswith("Data: "))
  assert "using the embedded one" in lines[data_line]
  assert data_line < next(
    i for i, line in enumerate(lines) if line.startswith("Compiled")
  )  # said first
  records = helpers.metrics_lib.read_metrics(workdir)
  losses = [r["train/loss"] for r in records if "train/loss" in r]
  assert losses[-1] < 0.6 * losses[0]
  final = json.loads((workdir / "final_eval.json").read_text())
  assert final["eval/zero_shot/shape_top1"] >= 3 * final["eval/zero_shot/shape_chance"]
  assert final["eval/zero_shot/color_top1"] >= 3 * final["eval/zero_shot/color_chance"]
  for direction in ("i2t", "t2i"):
    r1, r5, r10 = (final[f"eval/retrieval/{direction}_r{k}"] for k in (1, 5, 10))
    assert 0 < r1 <= r5 <= r10 and r10 > 10 * 10 / 1000  # well above chance (10 of 1000)
  assert "zero_shot/shape_top1" in result.stdout and "retrieval/i2t_r10" in result.stdout
  assert (workdir / "config.json").exists() and list((workdir / "tensorboard").iterdir())


@pytest.mark.slow
def test_tiny_clip_config_as_shipped(tmp_path):
  _check_learned(tmp_path, _run_tiny(tmp_path))


def test_eval_mode_reproduces_final_eval(tmp_path):
  """--mode=eval on a finished run's workdir gives the metrics the run recorded."""
  quick = [
    "--config.train.duration=4",
    "--config.model.image.variant=micro/8",
    "--config.model.text.variant=micro",
    "--config.batch_size=16",
    "--config.evals.retrieval.limit=64",
    "--config.evals.zero_shot.limit=64",
  ]
  result = _run_tiny(tmp_path, *quick)
  lines = result.stdout.splitlines()
  data_line = next(i for i, line in enumerate(lines) if line.startswith("Data: "))
  assert "using the embedded one" in lines[data_line]
  assert data_line < next(
    i for i, line in enumerate(lines) if line.startswith("Compiled")
  )  # said first
  assert "zero_shot/shape_top1" in result.stdout and "retrieval/i2t_r10" in result.stdout
  assert (tmp_path / "config.json").exists() and list((tmp_path / "tensorboard").iterdir())
  _run_tiny(tmp_path, "--mode=eval", *quick)
  final = json.loads((tmp_path / "final_eval.json").read_text())
  records = [
    json.loads(p.read_text()) for p in (tmp_path / "eval_records" / "step_4").rglob("*.json")
  ]
  again = {f"eval/{k}": v for r in records for k, v in r["metrics"].items()}
  for name, value in final.items():
    if name not in ("step", "eval/wall_s"):
      assert again[name] == pytest.approx(value, abs=1e-6), name
