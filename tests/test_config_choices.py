"""Every enumerated config value is checked before anything runs: a bad one is one line that names the key,
the value and the choices. In-process over every recipe's keys, and through the CLI as users type them."""

import glob
import os
import subprocess
import sys

import pytest

from tests import helpers
from vlm_jax import config_utils, recipe_card
from vlm_jax.assembly.experiment import check_config
from vlm_jax.errors import ConfigError

CHOICE_KEYS = (
  "model.remat",
  "model.dtype",
  "model.param_dtype",
  "model.attention",
  "model.logit_scale_clamp",
  "model.head",
  "model.image.variant",
  "model.text.variant",
  "model.encoder.variant",
  "model.decoder.variant",
  "model.image.act",
  "model.text.act",
  "model.image.pool",
  "model.text.pool",
  "optim.name",
  "optim.weight_decay_mode",
  "optim.warmup_from",
  "optim.schedule",
)
RECIPES = sorted(
  os.path.basename(p) for p in glob.glob(os.path.join(helpers.ROOT, "experiments", "*.py"))
)


def _get(config, key):
  node = config
  for part in key.split("."):
    if part not in node:
      return None
    node = node[part]
  return node


def _spec(recipe):
  """The recipe's :tiny variant, or its default where it has none (the larger towers)."""
  path = os.path.join(helpers.ROOT, "experiments", recipe)
  return path + (":tiny" if "tiny" in recipe_card.load_recipe(path).VARIANTS else "")


def _cases():
  for recipe in RECIPES:
    config = config_utils.load_config(_spec(recipe))
    for key in CHOICE_KEYS:
      if _get(config, key) is not None:
        yield pytest.param(recipe, key, id=f"{recipe[:-3]}-{key}")


@pytest.mark.parametrize("recipe,key", list(_cases()))
def test_a_bad_choice_is_one_line_naming_key_value_and_choices(recipe, key):
  config = config_utils.load_config(_spec(recipe))
  *parents, leaf = key.split(".")
  with config.unlocked():
    node = config
    for part in parents:
      node = node[part]
    node[leaf] = "bogus/7"
  with pytest.raises(ConfigError) as error:
    check_config(config, num_devices=1, weights=False)
  message = str(error.value)
  assert "\n" not in message and key in message and "bogus/7" in message, message
  assert "known" in message or "not one of" in message or "write SIZE/PATCH" in message, message


@pytest.mark.parametrize(
  "args,message",
  [
    (["--config.model.remat=sometimes"], "model.remat='sometimes' is not one of: none, full, dots"),
    (["--config.model.dtype=float17"], "model.dtype='float17' is not one of: auto, float32"),
    (
      ["--config.model.attention=cudnn"],
      "model.attention='cudnn' needs a GPU, and this step runs on cpu",
    ),
    (["--config.model.image.variant=X/16"], "model.image.variant: unknown ViT variant 'X/16'"),
    (
      ["--config.batch_size=8", "--config.optim.lr=abc"],
      "bad config override --config.optim.lr: ",  # only the bad one is named
    ),
    (
      ["--config.batch_size=8", "--config.model.image.num_heads=5"],
      "bad config override --config.model.image.num_heads: unknown config key 'num_heads'",
    ),
  ],
  ids=["remat", "dtype", "cudnn_on_cpu", "vit_variant", "one_of_several_overrides", "unknown_key"],
)
def test_bad_values_on_the_command_line_are_one_line(tmp_path, args, message):
  result = helpers.run_main(tmp_path / "run", *args, num_devices=1)
  assert result.returncode == 2
  lines = [line for line in result.stderr.splitlines() if not line.startswith(("W1", "I1"))]
  assert lines == [f"error: {lines[0][len('error: ') :]}"] and message in lines[0], result.stderr[
    -2000:
  ]
  assert not (tmp_path / "run").exists()


def test_a_wrong_recipe_variant_and_eval_overrides_without_config_are_one_line(tmp_path):
  run = lambda *args: subprocess.run(
    [sys.executable, "-m", "vlm_jax.main", *args],
    env=helpers.subprocess_env(1),
    capture_output=True,
    text=True,
    timeout=120,
    cwd=helpers.ROOT,
  )
  result = run("--config", "experiments/clip_b32.py:huge", "--workdir", str(tmp_path / "x"))
  assert result.returncode == 2 and result.stderr.strip().splitlines()[-1] == (
    "error: config experiments/clip_b32.py:huge: ValueError: unknown clip_b32 variant 'huge'; known: "
    "base, paper, tiny, small"
  ), result.stderr[-2000:]
  assert "Traceback" not in result.stderr
  result = run("--mode=eval", "--workdir", str(tmp_path / "x"), "--config.eval_batch_size=8")
  assert result.returncode == 2
  assert "--config.eval_batch_size changes a config, but no --config is given" in result.stderr


# Mistakes only the model's construction finds (sizes that do not fit together, a choice one model
# family knows): every family's is a one-line ConfigError naming the key, before a step runs.
BUILD_MISTAKES = [
  ("clip_b32.py", {"model.image.num_heads": 5}, "num_heads"),
  ("siglip_b16.py", {"model.image_head": "conv"}, "model.image_head='conv' is not one of"),
  ("lit_b16.py", {"model.locked": ("vision",)}, "model.locked names 'vision'"),
  ("coca_b32.py", {"model.text.causal": False}, "model.text.causal must be True"),
  ("vilt_b32.py", {"model.image.image_size": 50}, "model.image.image_size=50 is not a multiple"),
  ("flava_b16.py", {"model.text.num_heads": 5}, "num_heads"),
  ("simvlm_base.py", {"model.image.image_size": 50}, "model.image.image_size=50 is not a multiple"),
  ("cappa_b16.py", {"model.text.mask_token": False}, "model.text.mask_token=True"),
  ("prefixlm_b16.py", {"model.projector": "conv"}, "model.projector='conv' is not one of"),
]


@pytest.mark.parametrize(
  "recipe,overrides,message", BUILD_MISTAKES, ids=[r[:-3] for r, _, _ in BUILD_MISTAKES]
)
def test_a_model_that_cannot_be_built_is_a_one_line_config_error(recipe, overrides, message):
  from vlm_jax.assembly import experiment  # pylint: disable=import-outside-toplevel

  config = config_utils.load_config(os.path.join(helpers.ROOT, "experiments", recipe) + ":tiny")
  with config.unlocked():
    config.update_from_flattened_dict({"init_from.workdir": "", **overrides})
  with pytest.raises(ConfigError) as error:
    experiment.Experiment(config, log=lambda *a, **k: None, weights=False)
  assert "\n" not in str(error.value) and message in str(error.value), str(error.value)


def test_a_model_that_cannot_be_built_exits_2_with_one_line(tmp_path):
  result = helpers.run_main(tmp_path / "run", "--config.model.image.image_size=50", num_devices=1)
  assert result.returncode == 2, result.stderr[-2000:]
  lines = [line for line in result.stderr.splitlines() if not line.startswith(("W1", "I1"))]
  assert len(lines) == 1 and lines[0].startswith("error: model.image.image_size=50 is not"), lines
  assert not (tmp_path / "run" / "checkpoints").exists() or not os.listdir(
    tmp_path / "run" / "checkpoints"
  )
