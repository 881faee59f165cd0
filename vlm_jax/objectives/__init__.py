"""Objectives: `loss(params, batch, rng, *, model, train) -> (loss, metrics)`, combined by weight."""
import jax

from vlm_jax.objectives import captioning, contrastive, masked_modeling, matching, prefix_lm, sigmoid  # noqa: F401
from vlm_jax.registry import OBJECTIVES


def build_objective(objectives_config, *, mesh, tokenizer=None):
  """A weighted sum of the configured objectives.

  `objectives_config` maps a key to {name (default: the key), weight, ...options}. Metrics keep their own
  names; the total is `loss`. Builders are called as `builder(config, mesh=..., tokenizer=...)`; a
  loss function may declare extra batch keys it needs (`loss_fn.batch_keys`, e.g. {'word_start'}), which
  the returned function collects for the input pipeline.
  """
  if not objectives_config:
    raise ValueError("config.objectives is empty; name at least one objective, e.g. {'clip': {'weight': 1.0}}")
  parts = []
  for key, cfg in objectives_config.items():
    builder = OBJECTIVES.get(cfg.get("name", key))
    parts.append((key, float(cfg.get("weight", 1.0)), builder(cfg, mesh=mesh, tokenizer=tokenizer)))

  def loss_fn(params, batch, rng, *, model, train):
    total, metrics = 0.0, {}
    for i, (key, weight, fn) in enumerate(parts):
      loss, part_metrics = fn(params, batch, jax.random.fold_in(rng, i), model=model, train=train)
      total = total + weight * loss
      metrics.update(part_metrics)
      metrics.setdefault(f"{key}_loss", loss)
    metrics["loss"] = total
    return total, metrics

  loss_fn.batch_keys = set().union(*(getattr(fn, "batch_keys", set()) for _, _, fn in parts))
  return loss_fn
