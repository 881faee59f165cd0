"""Builds the configured evaluators and runs them together, sharing the test-image embeddings."""
import time

from vlm_jax.eval import common
from vlm_jax.registry import EVALUATORS


class EvalRunner:
  """evals: {key: evaluator config} (default: the run config's `evals`)."""

  def __init__(self, experiment, evals=None):
    self.exp = experiment
    evals = experiment.config.evals if evals is None else evals
    self.evaluators = {key: EVALUATORS.get(cfg.get("name", key))(cfg, experiment) for key, cfg in evals.items()}
    needs_images = any(getattr(e, "needs_image_emb", True) for e in self.evaluators.values())
    self._image_encoder = common.Encoder(experiment, "encode_image") if needs_images else None

  def num_examples(self, key: str) -> int:
    limit, n = getattr(self.evaluators[key], "limit", None), len(self.exp.data.test)
    return n if not limit else min(limit, n)

  def run_each(self, params, keys=None):
    """Yields (key, metrics, seconds) per evaluator (those in `keys`, default all), in config order."""
    cache = {}
    source = self.exp.data.test
    for key, evaluator in self.evaluators.items():
      if keys is not None and key not in keys:
        continue
      start = time.perf_counter()
      if not getattr(evaluator, "needs_image_emb", True):
        metrics = evaluator.run(params)
      else:
        n = self.num_examples(key)
        if n not in cache:
          cache[n] = self._image_encoder(params, n, common.image_rows(self.exp, source))
        metrics = evaluator.run(params, image_emb=cache[n])
      yield key, metrics, time.perf_counter() - start

  def run(self, params) -> dict:
    """{'eval/<metric>': value} for every evaluator, plus the wall time."""
    start = time.perf_counter()
    out = {}
    for _, metrics, _ in self.run_each(params):
      out.update({f"eval/{k}": v for k, v in metrics.items()})
    if out:
      out["eval/wall_s"] = time.perf_counter() - start
    return out
