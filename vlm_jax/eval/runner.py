"""Builds the configured evaluators and runs them together, sharing the test-image embeddings.

An evaluator config may name its own dataset, `data=dict(name='folder', path=..., classnames=...)` (fields it
lacks come from the run's data config): a zero-shot or linear-probe set for a run trained on other data.
Without `label_keys` it then classifies every label of that dataset.
"""

import json
import time

import ml_collections

from vlm_jax.errors import ConfigError, MissingDataError
from vlm_jax.eval import common
from vlm_jax.registry import DATASETS, EVALUATORS


class ExperimentOnData:
  """The experiment as an evaluator sees it, with another dataset in place of the run's."""

  def __init__(self, experiment, data):
    self._experiment, self.data = experiment, data

  def __getattr__(self, name):
    return getattr(self._experiment, name)


def eval_data(experiment, data_config):
  """The dataset an evaluator's `data` config names (fields it lacks from the run's data config)."""
  merged = {**experiment.config.data.to_dict(), **dict(data_config)}
  data = DATASETS.get(merged["name"])(ml_collections.ConfigDict(merged))
  if not len(data.test):
    raise ConfigError(f"evaluation data {data.description} has no test examples")
  return data


class EvalRunner:
  """evals: {key: evaluator config} (default: the run config's `evals`)."""

  def __init__(self, experiment, evals=None, skip_missing=()):
    """skip_missing: keys whose evaluator is left out (reason in `self.skipped`) when its data is not
    there (`MissingDataError`), instead of failing."""
    self.exp = experiment
    evals = experiment.config.evals if evals is None else evals
    datasets, self.evaluators, self.skipped = {}, {}, {}
    for key, cfg in evals.items():
      view = experiment
      if cfg.get("data"):
        spec = json.dumps(dict(cfg["data"]), sort_keys=True, default=str)
        if spec not in datasets:
          try:
            datasets[spec] = eval_data(experiment, cfg["data"])
            experiment.log(f"Evaluator {key!r} reads {datasets[spec].description}")
          except MissingDataError as e:
            datasets[spec] = e  # every evaluator on this data is told the same
        if isinstance(datasets[spec], MissingDataError):
          if key not in skip_missing:
            raise datasets[spec]
          self.skipped[key] = str(datasets[spec])
          continue
        view = ExperimentOnData(experiment, datasets[spec])
        if not cfg.get("label_keys"):
          cfg = {**dict(cfg), "label_keys": tuple(view.data.class_names)}
      elif not len(experiment.data.test):
        raise ConfigError(
          f"evaluator {key!r} has no test data: {experiment.data.description}; give it its own "
          f"in the config, e.g. evals.{key}.data = dict(name='folder', path=DIR)"
        )
      missing = [k for k in cfg.get("label_keys", ()) or () if k not in view.data.class_names]
      if missing:
        raise ConfigError(
          f"evaluator {key!r} classifies label(s) {', '.join(missing)}, which "
          f"{view.data.description} does not have (it has: "
          f"{', '.join(view.data.class_names) or 'no labels'}); set evals.{key}.label_keys, or give "
          f"it data of its own, e.g. evals.{key}.data = dict(name='embedded')"
        )
      self.evaluators[key] = EVALUATORS.get(cfg.get("name", key))(cfg, view)
    needs_images = any(getattr(e, "needs_image_emb", True) for e in self.evaluators.values())
    self._image_encoder = common.Encoder(experiment, "encode_image") if needs_images else None

  def data(self, key: str):
    return self.evaluators[key].exp.data

  def num_examples(self, key: str) -> int:
    limit, n = getattr(self.evaluators[key], "limit", None), len(self.data(key).test)
    return n if not limit else min(limit, n)

  def run_each(self, params, keys=None, log=None):
    """Yields (key, metrics, seconds) per evaluator (those in `keys`, default all), in config order.
    `log` (default: the experiment's) gets a line as each one starts: evaluations can take minutes."""
    log = self.exp.log if log is None else log
    cache = {}
    for key, evaluator in self.evaluators.items():
      if keys is not None and key not in keys:
        continue
      log(
        f"  evaluating {key} on {self.num_examples(key)} examples of {self.data(key).description}"
      )
      start = time.perf_counter()
      if not getattr(evaluator, "needs_image_emb", True):
        metrics = evaluator.run(params)
      else:
        n, data = self.num_examples(key), self.data(key)
        if (id(data), n) not in cache:
          cache[id(data), n] = self._image_encoder(
            params, n, common.image_rows(self.exp, data.test)
          )
        metrics = evaluator.run(params, image_emb=cache[id(data), n])
      yield key, metrics, time.perf_counter() - start

  def run(self, params, on_each=None) -> dict:
    """{'eval/<metric>': value} for every evaluator, plus the wall time; on_each(key, metrics, seconds)
    as each evaluator finishes (the trainer writes its record)."""
    start = time.perf_counter()
    out = {}
    for key, metrics, seconds in self.run_each(params):
      if on_each is not None:
        on_each(key, metrics, seconds)
      out.update({f"eval/{k}": v for k, v in metrics.items()})
    if out:
      out["eval/wall_s"] = time.perf_counter() - start
    return out
