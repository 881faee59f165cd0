"""Sweep files and their expansion into runs.

A sweep file is a Python file with `get_sweep()` returning a dict:
  name       the sweep's name (its runs' workdirs are <root>/<name>/<run>)
  base       the config spec every run starts from (e.g. "experiments/clip_b32.py:tiny")
  grid       {key: [values]}: every combination
  zip        {key: [values]}: lists of one length, taken together (e.g. a config spec with its own lr)
  seeds      [seeds] (default [0]); each combination runs once per seed (`--config.seed`)
  overrides  {key: value} for every run
  root       where the workdirs go (default "runs/sweeps"); a bucket URL for TPU VMs
  tpu, slurm backend settings (see those backends)
Keys are config keys (`optim.lr`), or `config`: the config spec itself, so that one sweep can compare
recipes. A run's name is made of its axis values (`clip_b32-tiny__lr0.001__seed0`); its workdir gets a
sweep.json naming them, which `vlm_jax.tables` uses as the table's columns.
"""

import dataclasses
import importlib.util
import itertools
import os
import re
import sys

from vlm_jax import storage
from vlm_jax.errors import ConfigError

SWEEP_KEYS = ("name", "base", "grid", "zip", "seeds", "overrides", "root", "tpu", "slurm")


@dataclasses.dataclass
class Run:
  name: str
  config: str  # the config spec
  overrides: dict  # {config key: value}, seed included
  axes: dict  # the values of the sweep's axes (seed included), for tables
  workdir: str

  def args(self) -> list:
    """The `python -m vlm_jax.main` arguments that train this run."""
    return ["--config", self.config, "--workdir", self.workdir] + [
      f"--config.{k}={format_value(v)}" for k, v in self.overrides.items()
    ]

  def write_sweep_json(self, sweep_name: str):
    storage.write_json(
      storage.join(self.workdir, "sweep.json"),
      {
        "sweep": sweep_name,
        "run": self.name,
        "config": self.config,
        "axes": self.axes,
        "overrides": self.overrides,
      },
      default=str,
    )

  def finished(self) -> bool:
    """A finished run has final_eval.json (so does each finished stage of a staged recipe)."""
    return storage.exists(storage.join(self.workdir, "final_eval.json"))


def format_value(value) -> str:
  """A command-line value ml_collections parses back to `value` (tuples/lists as Python literals)."""
  return repr(value) if isinstance(value, (tuple, list)) else str(value)


def parse_override(text: str) -> tuple:
  """'train.max_steps=10' -> ('train.max_steps', '10') (the value is passed on as --config.KEY=VALUE)."""
  key, sep, value = text.partition("=")
  if not sep or not key.strip():
    raise ConfigError(f"--set {text!r}: write KEY=VALUE, e.g. --set train.max_steps=10")
  return key.strip(), value


def load_sweep(path: str) -> dict:
  if not os.path.exists(path):  # local path: a sweep file, imported
    raise ConfigError(f"sweep file {path!r} not found")
  spec = importlib.util.spec_from_file_location("vlm_jax_sweep", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  if not hasattr(module, "get_sweep"):
    raise ConfigError(f"{path} has no get_sweep() function")
  sweep = module.get_sweep()
  unknown = set(sweep) - set(SWEEP_KEYS)
  if unknown or "name" not in sweep or "base" not in sweep:
    raise ConfigError(
      f"{path}: a sweep needs name and base and may have {', '.join(SWEEP_KEYS)}; "
      f"unknown: {sorted(unknown)}"
    )
  return sweep


def _short(key: str, value) -> str:
  if key == "config":
    value = storage.basename(str(value)).replace(".py", "")
  name = "" if key == "config" else key.split(".")[-1]
  return re.sub(r"[^A-Za-z0-9._:+-]", "", f"{name}{value}").replace(":", "-")


def expand(sweep: dict, root: str | None = None) -> list:
  """The sweep's runs, in a stable order: grid combinations x zipped values x seeds."""
  grid = sweep.get("grid") or {}
  zipped = sweep.get("zip") or {}
  lengths = {len(v) for v in zipped.values()}
  if len(lengths) > 1:
    raise ConfigError(
      f"sweep {sweep['name']}: zip lists must have one length, got {sorted(lengths)}"
    )
  zip_rows = [dict(zip(zipped, values)) for values in zip(*zipped.values())] if zipped else [{}]
  grid_rows = (
    [dict(zip(grid, values)) for values in itertools.product(*grid.values())] if grid else [{}]
  )
  seeds = list(sweep.get("seeds") or [0])
  root = root or sweep.get("root") or "runs/sweeps"
  runs, names = [], set()
  for grid_row, zip_row, seed in itertools.product(grid_rows, zip_rows, seeds):
    axes = {**zip_row, **grid_row}
    config = axes.get("config", sweep["base"])
    overrides = {
      **(sweep.get("overrides") or {}),
      **{k: v for k, v in axes.items() if k != "config"},
      "seed": seed,
    }
    name = "__".join([_short(k, v) for k, v in axes.items()] + [f"seed{seed}"])
    if name in names:
      raise ConfigError(f"sweep {sweep['name']}: two runs would share the name {name!r}")
    names.add(name)
    runs.append(
      Run(
        name=name,
        config=config,
        overrides=overrides,
        axes={**axes, "seed": seed},
        workdir=storage.join(root.rstrip("/"), sweep["name"], name),
      )
    )
  return runs


def main_command(run: Run, python: str = sys.executable) -> list:
  return [python, "-m", "vlm_jax.main"] + run.args()
