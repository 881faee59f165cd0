"""Evaluation cadence and progress, through the CLI: `every=0` evaluates once at the end, `every=never` not
at all; every evaluation prints a line as it starts, naming its data."""

import json

from tests import helpers


def test_every_never_leaves_an_evaluator_out_and_every_evaluation_says_what_it_reads(tmp_path):
  steps = {"train.duration": "2 steps", "evals.retrieval.every": "never"}
  result = helpers.run_main(tmp_path, num_devices=1, **steps)
  assert result.returncode == 0, result.stderr[-3000:]
  final = json.loads((tmp_path / "final_eval.json").read_text())
  assert "eval/zero_shot/shape_top1" in final  # every="0 steps": once, at the end
  assert not any(k.startswith("eval/retrieval/") for k in final), sorted(final)
  assert "  evaluating zero_shot on 32 examples of the embedded synthetic dataset" in result.stdout
  assert "evaluating retrieval" not in result.stdout

  evaluated = helpers.run_main(tmp_path, "--mode=eval", num_devices=1, **steps)
  assert evaluated.returncode == 0, evaluated.stderr[-3000:]
  lines = evaluated.stdout.splitlines()
  started = next(i for i, line in enumerate(lines) if line.startswith("  evaluating zero_shot"))
  assert started < next(i for i, line in enumerate(lines) if "zero_shot/shape_top1" in line)
