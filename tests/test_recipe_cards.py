"""Every recipe holds its card: each variant's config equals the reference's settings (or the variant's own,
with why), docs/recipes.md shows the cards as rendered from the recipes, and every config key whose default
is None can be set from the command line."""

import os
import sys

from absl import flags
from ml_collections import config_dict, config_flags
import pytest

from tests import helpers
from vlm_jax import config_utils, recipe_card

EXPERIMENTS = os.path.join(helpers.ROOT, "experiments")
RECIPE_VARIANTS = [
  (name, variant)
  for name in recipe_card.RECIPES
  for variant in recipe_card.load_recipe(os.path.join(EXPERIMENTS, f"{name}.py")).VARIANTS
]


def _config(name, variant):
  return config_utils.load_config(os.path.join(EXPERIMENTS, f"{name}.py:{variant}"))


def test_every_recipe_has_a_card():
  files = {f[:-3] for f in os.listdir(EXPERIMENTS) if f.endswith(".py")}
  assert files == set(recipe_card.RECIPES), files ^ set(recipe_card.RECIPES)


@pytest.mark.parametrize("name,variant", RECIPE_VARIANTS)
def test_recipe_follows_its_card(name, variant):
  card = recipe_card.load_recipe(os.path.join(EXPERIMENTS, f"{name}.py")).CARD
  assert card.mismatches(_config(name, variant), variant) == []


def test_a_setting_that_drifts_from_its_card_is_named():
  card = recipe_card.load_recipe(os.path.join(EXPERIMENTS, "siglip_b16.py")).CARD
  config = _config("siglip_b16", "paper")
  with config.unlocked():
    config.optim.weight_decay_mode = (
      "lr_coupled"  # optax.adamw's rule: 1000x weaker decay at lr 1e-3
    )
    config.optim.b2 = 0.999
  assert card.mismatches(config, "paper") == [
    "optim.b2: config has 0.999, the card says 0.95",
    "optim.weight_decay_mode: config has 'lr_coupled', the card says 'decoupled'",
  ]


def test_docs_show_every_card_as_the_recipes_define_it():
  with open(os.path.join(helpers.ROOT, "docs", "recipes.md")) as f:
    text = f.read()
  shown = text.split(recipe_card.BEGIN)[1].split(recipe_card.END)[0].strip()
  assert shown == recipe_card.render(EXPERIMENTS), (
    "docs/recipes.md's cards are out of date: python -m vlm_jax.tools.recipe_cards --write docs/recipes.md"
  )


def _none_fields(config, prefix=""):
  """(dotted path, FieldReference or None) of every field whose value is None."""
  found = []
  for key in config.keys():
    value = config[key]
    path = f"{prefix}{key}"
    if isinstance(value, config_dict.ConfigDict):
      found += _none_fields(value, path + ".")
    elif value is None:
      found.append((path, config._fields[key]))  # pylint: disable=protected-access
  return found


SAMPLES = {tuple: ("(0.9, 1.0)", (0.9, 1.0)), int: ("3", 3), float: ("0.5", 0.5), str: ("x", "x")}


@pytest.mark.parametrize("name,variant", RECIPE_VARIANTS)
def test_every_none_default_can_be_set_from_the_command_line(name, variant, monkeypatch):
  """A key whose default is None must be a typed placeholder: ml_collections refuses to override a plain
  None ("Type NoneType of field ... is not supported for overriding")."""
  spec = os.path.join(EXPERIMENTS, f"{name}.py:{variant}")
  fields = _none_fields(_config(name, variant))
  for path, field in fields:
    assert isinstance(field, config_dict.FieldReference), (
      f"{path} is a plain None: make it config_dict.placeholder(type) so that it can be overridden"
    )
    text, value = SAMPLES[field.get_type()]
    argv = ["main", "--config", spec, f"--config.{path}={text}"]
    monkeypatch.setattr(sys, "argv", argv)  # config_flags reads the overrides from sys.argv
    flag_values = flags.FlagValues()
    config_flags.DEFINE_config_file("config", None, "", flag_values=flag_values, lock_config=True)
    flag_values(argv)
    assert recipe_card.lookup(flag_values.config, path) == value, path
  if name == "siglip_b16":
    assert "data.augment.crop_scale" in [p for p, _ in fields]  # the case the issue met
