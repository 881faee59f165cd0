"""Staged recipes: one run made of stages trained in order (e.g. LLaVA: the LM on captions alone, then only
the projector, then projector + LM), each in its own sub-workdir `WORKDIR/stage<i>_<name>`.

`config.stages` is a list of dicts:
  name       the stage's name (its sub-workdir's suffix)
  trainable  regex of the parameter paths that train; every other parameter is frozen: no optimizer state,
             bit-identical through the stage (`optim.trainable`)
  init_from  where its parameters start: "previous" (the default after the first stage: the previous
             stage's last checkpoint), "" (fresh initialisation; the first stage's default, which keeps
             the run's own `init_from`, e.g. a vision tower from a CLIP run), or a workdir
  include    regex of the parameters read from `init_from` (default: all)
  overrides  {dotted config key: value} for this stage, e.g. {"objectives": {...}, "train.duration": ...}

Running the command again skips finished stages (those with final_eval.json) and resumes an unfinished one
from its own checkpoints; a stage never starts before the previous one has finished.
"""

import copy

import jax
import ml_collections

from vlm_jax import config_utils, storage
from vlm_jax.assembly.experiment import planned_steps
from vlm_jax.errors import ConfigError
from vlm_jax.registry import DATASETS

STAGE_KEYS = ("name", "trainable", "init_from", "include", "overrides")


def _set(config, key: str, value):
  *parents, leaf = key.split(".")
  node = config
  for p in parents:
    if p not in node:
      raise ConfigError(f"stage override {key!r}: the config has no {p!r}")
    node = node[p]
  node[leaf] = ml_collections.ConfigDict(value) if isinstance(value, dict) else value


def stage_dir(workdir: str, index: int, stage: dict) -> str:
  return storage.join(workdir, f"stage{index}_{stage['name']}")


def stage_configs(config, workdir: str):
  """[(sub-workdir, config)] for every stage, in order."""
  stages = list(config.get("stages", None) or [])
  out = []
  for i, stage in enumerate(stages):
    unknown = set(stage) - set(STAGE_KEYS)
    if unknown or "name" not in stage:
      raise ConfigError(
        f"stage {i}: needs a name and only has keys {', '.join(STAGE_KEYS)}; got {sorted(stage)}"
      )
    c = ml_collections.ConfigDict(copy.deepcopy(config.to_dict()))
    del c["stages"]
    for key, value in (stage.get("overrides") or {}).items():
      _set(c, key, value)
    c.optim.trainable = stage.get("trainable", "")
    source = stage.get("init_from", "previous" if i else "")
    if source == "previous":
      if i == 0:
        raise ConfigError(
          "the first stage has no previous stage to start from; set its init_from to '' or a workdir"
        )
      source = stage_dir(workdir, i - 1, stages[i - 1])
    if source:
      c.init_from = ml_collections.ConfigDict(
        dict(workdir=source, step=-1, include=stage.get("include", ".*"))
      )
    out.append((stage_dir(workdir, i, stage), c))
  return out


def _stop_step(config) -> int:
  needs_size = "epoch" in str(config.train.duration)
  return planned_steps(
    config, len(DATASETS.get(config.data.name)(config.data).train) if needs_size else None
  )[1]


def run(config, workdir: str, *, train, log=print) -> dict:
  """Trains every stage in order with `train(config, workdir, log=...)`; returns the last one's results."""
  workdir = storage.resolve(workdir)
  configs = stage_configs(config, workdir)
  if jax.process_index() == 0:
    storage.check_writable_dir(workdir)
    config_utils.save_workdir_config(config, workdir)
  results = {}
  for i, (subdir, c) in enumerate(configs):
    final = storage.join(subdir, "final_eval.json")
    if storage.exists(final) and storage.read_json(final)["step"] >= _stop_step(c):
      log(f"Stage {i} ({storage.basename(subdir)}) finished earlier; skipping")
      continue
    log(
      f"Stage {i}: {storage.basename(subdir)} (trainable: {c.optim.trainable or 'all'}; "
      f"from: {c.init_from.workdir or 'fresh initialisation'})"
    )
    results = train(c, subdir, log=log)
  return results
