"""`python -m vlm_jax.tools.bench --against open_clip`: open_clip's own CLIP, built from the same config, timed in
turns with vlm_jax's step (the benchmark itself and its figures are in docs/scaling.md)."""

import importlib.util
import json
import subprocess
import sys

import pytest

from tests import helpers

pytestmark = [
  pytest.mark.skipif(
    importlib.util.find_spec("open_clip") is None or importlib.util.find_spec("torch") is None,
    reason="needs torch and open_clip_torch (the README's test set-up installs both)",
  ),
  pytest.mark.ci,  # benchmark subprocesses: CI's second tier
]


def _bench(config, *extra):
  return subprocess.run(
    [
      sys.executable,
      "-m",
      "vlm_jax.tools.bench",
      "--config",
      config,
      "--against",
      "open_clip",
      *extra,
    ],
    env=helpers.subprocess_env(1),
    capture_output=True,
    text=True,
    timeout=600,
    cwd=helpers.ROOT,
  )


def test_open_clip_is_the_same_model_and_both_are_timed_in_turns():
  result = _bench(
    "experiments/clip_b32.py:tiny",
    # Five rounds of three calls, every phase timed in each round: the medians survive bursts of load
    # from the other worker (timing each phase's rounds in one block let a burst that covered forward's
    # block make it look slower than forward+backward, in CI).
    "--steps=3",
    "--rounds=5",
    "--warmup=0",
    *helpers.cli_overrides(),
  )
  assert result.returncode == 0, result.stderr[-3000:]
  report = json.loads(result.stdout.strip().splitlines()[-1])
  # Same architecture: open_clip's CLIP built from the config has exactly vlm_jax's parameter count.
  assert report["open_clip_parameters"] == report["parameters"] > 0
  assert report["open_clip_step_time_s"] > 0 and report["vlm_jax_step_time_interleaved_s"] > 0
  assert report["vs_open_clip"] == pytest.approx(
    report["vlm_jax_step_time_interleaved_s"] / report["open_clip_step_time_s"]
  )
  # The phases are timed on both sides: the backward pass costs more than the forward it follows. Compared
  # on each phase's fastest round: in CI a burst of load from the other worker once made open_clip's
  # forward median (0.045 s) slower than its forward+backward (0.032 s).
  assert report["phases"]["forward"]["open_clip_s"] > 0
  fastest = report["phases_fastest_round"]
  for side in ("vlm_jax_s", "open_clip_s"):
    assert 0 < fastest["forward"][side] < fastest["forward_backward"][side], fastest


def test_a_recipe_open_clip_cannot_build_is_a_one_line_error():
  result = _bench(
    "experiments/siglip_b16.py:tiny", "--steps=1", *helpers.cli_overrides(**{"model.embed_dim": 64})
  )
  assert result.returncode != 0
  assert "--against open_clip compares CLIP recipes, not 'siglip'" in result.stderr
  assert "Traceback" not in result.stderr
