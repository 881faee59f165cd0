"""One converter for every duration in a config: train length and log/eval/checkpoint cadence.

A duration is an int or a bare number (steps) or a string "<number> <unit>" with unit steps, epochs or examples,
e.g. "2000 steps", "32 epochs", "12.8e6 examples". Expressing a duration in epochs or examples
keeps a sweep over batch sizes comparable.
"""

import math
import re

from vlm_jax.errors import ConfigError

NEVER = "never"  # evals.<name>.every: not during training, nor at its end

_UNITS = {
  "step": "steps",
  "steps": "steps",
  "epoch": "epochs",
  "epochs": "epochs",
  "example": "examples",
  "examples": "examples",
}
_PATTERN = re.compile(r"^\s*([0-9.eE+\-]+)\s*([a-zA-Z]+)\s*$")


def parse(duration):
  """Returns (amount, unit) with unit in steps/epochs/examples."""
  if isinstance(duration, bool):
    raise ConfigError(f"duration {duration!r} is a bool; write e.g. '1000 steps' or '2 epochs'")
  if isinstance(duration, (int, float)):
    return float(duration), "steps"
  if re.fullmatch(
    r"\s*[0-9]+\s*", str(duration)
  ):  # "--config.train.duration=2000" arrives as a string
    return float(duration), "steps"
  match = _PATTERN.match(str(duration))
  if not match or match.group(2).lower() not in _UNITS:
    raise ConfigError(
      f"cannot read duration {duration!r}; write '<number> steps|epochs|examples', "
      "e.g. '1000 steps' or '2.5 epochs'"
    )
  try:
    amount = float(match.group(1))
  except ValueError:
    raise ConfigError(f"cannot read the number in duration {duration!r}") from None
  if amount < 0:
    raise ConfigError(f"duration {duration!r} is negative")
  return amount, _UNITS[match.group(2).lower()]


def to_steps(duration, *, batch_size: int, dataset_size: int | None = None) -> int:
  """Converts a duration to a whole number of steps (rounded up; 0 stays 0)."""
  amount, unit = parse(duration)
  if unit == "steps":
    examples = amount * batch_size
  elif unit == "examples":
    examples = amount
  else:
    if not dataset_size:
      raise ConfigError(
        f"duration {duration!r} is in epochs but the dataset size is unknown; "
        "give it in steps or examples"
      )
    examples = amount * dataset_size
  return int(math.ceil(examples / batch_size - 1e-9))
