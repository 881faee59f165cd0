"""Builds the configured evaluators and runs them together, sharing the test-image embeddings."""
import time

from vlm_jax.eval import common
from vlm_jax.registry import EVALUATORS


class EvalRunner:

  def __init__(self, experiment):
    self.exp = experiment
    self.evaluators = {key: EVALUATORS.get(cfg.get("name", key))(cfg, experiment)
                       for key, cfg in experiment.config.evals.items()}
    self._image_encoder = common.Encoder(experiment, "encode_image") if self.evaluators else None

  def run(self, params) -> dict:
    """{'eval/<metric>': value} for every evaluator, plus the wall time."""
    start = time.perf_counter()
    cache, metrics = {}, {}
    source = self.exp.data.test
    for evaluator in self.evaluators.values():
      if not getattr(evaluator, "needs_image_emb", True):
        metrics.update(evaluator.run(params))
        continue
      n = len(source) if evaluator.limit is None else min(evaluator.limit, len(source))
      if n not in cache:
        cache[n] = self._image_encoder(params, n, common.image_rows(self.exp, source))
      metrics.update(evaluator.run(params, image_emb=cache[n]))
    out = {f"eval/{k}": v for k, v in metrics.items()}
    if out:
      out["eval/wall_s"] = time.perf_counter() - start
    return out
