"""Objectives: pure functions of one forward pass, combined by weight.

A registered builder, `builder(config, context) -> Objective` (`base.Context`: key, mesh, tokenizer, text
length), says what its objective needs:
- `requests`: extra model inputs drawn on device from the step RNG and the batch (masked tokens, a patch
  mask, an ITM pairing, a prefix-LM sequence), by name. Objectives that ask for the same name with the same
  `spec` share one draw (FLAVA's MLM and MMM mask the text once); different specs are a config error.
- `batch_fields` and `prepare`: fields the host adds to each example (word boundaries, a question/answer
  pair), so the input pipeline needs no knowledge of any objective.
- `loss(outputs, inputs) -> (loss, metrics)`: the objective itself, reading the model's outputs and its
  inputs (the batch plus the drawn requests).
The composite runs the model once per step with every request; under jit, what no loss reads is pruned.
"""

from collections.abc import Callable
import dataclasses
import importlib
import pkgutil
import zlib

import jax

from vlm_jax.errors import ConfigError
from vlm_jax.objectives.base import Context, Objective, Request
from vlm_jax.registry import OBJECTIVES

__all__ = ["Context", "Objective", "Request", "build_objective", "request_rng"]

# Every module of this package registers its objectives when imported, so a new objective is one file
# here and a config entry (docs/contributing.md), with no list to extend.
for _module in pkgutil.iter_modules(__path__):
  importlib.import_module(f"{__name__}.{_module.name}")


def request_rng(rng, name: str):
  """The step RNG of request `name`: keyed by the name, so a draw does not depend on which objectives ask."""
  return jax.random.fold_in(rng, zlib.crc32(name.encode()) & 0x7FFFFFFF)


@dataclasses.dataclass
class CompositeObjective:
  """The weighted sum of a recipe's objectives: `loss_fn(params, batch, rng, *, model, train)`."""

  parts: list  # (key, weight, Objective)
  requests: dict  # name -> Request (merged)
  prepare: Callable | None = None  # host side: (example, out, preprocess, rng) -> fields

  @property
  def batch_fields(self) -> dict:
    """Fields the host adds to each example: name -> (shape, dtype)."""
    return {k: v for _, _, o in self.parts for k, v in o.batch_fields.items()}

  def model_inputs(self, batch, rng) -> dict:
    """Every request, drawn once: name -> value."""
    return {
      name: request.draw(request_rng(rng, name), batch) for name, request in self.requests.items()
    }

  def inputs(self, batch, rng) -> dict:
    """The batch as the objectives read it: the model's images (the train step normalises them) and
    every request drawn."""
    return {**batch, **self.model_inputs(batch, jax.random.fold_in(rng, 0))}

  def outputs(self, params, inputs, rng, *, model, train) -> dict:
    """The one forward pass every objective reads."""
    return model.apply(
      {"params": params},
      inputs["image"],
      inputs["text"],
      train=train,
      requests={name: inputs[name] for name in self.requests},
      rngs={"dropout": jax.random.fold_in(rng, 1)},
    )

  def losses(self, outputs, inputs):
    """(weighted total, metrics) of the objectives on the model's outputs."""
    total, metrics = 0.0, {}
    for key, weight, objective in self.parts:
      loss, part_metrics = objective.loss(outputs, inputs)
      total = total + weight * loss
      metrics.update(part_metrics)
      metrics.setdefault(f"{key}_loss", loss)
    metrics["loss"] = total
    return total, metrics

  def __call__(self, params, batch, rng, *, model, train):
    inputs = self.inputs(batch, rng)
    return self.losses(self.outputs(params, inputs, rng, model=model, train=train), inputs)


def build_objective(
  objectives_config,
  *,
  mesh=None,
  tokenizer=None,
  max_len: int = 0,
  patch_size: int = 0,
) -> CompositeObjective:
  """The weighted sum of the configured objectives.

  `objectives_config` maps a key to {name (default: the key), weight, ...options}. Metrics keep their own
  names; the total is `loss`.
  """
  if not objectives_config:
    raise ConfigError(
      "config.objectives is empty; name at least one objective, e.g. {'clip': {'weight': 1.0}}"
    )
  parts, requests, owners = [], {}, {}
  for key, cfg in objectives_config.items():
    objective = OBJECTIVES.get(cfg.get("name", key))(
      cfg, Context(key, mesh, tokenizer, max_len, patch_size)
    )
    for name, request in objective.requests.items():
      if name in requests and requests[name].spec != request.spec:
        raise ConfigError(
          f"objectives {owners[name]!r} and {key!r} both ask for {name!r} but differently "
          f"({requests[name].spec} vs {request.spec}); the forward pass draws it once: make "
          "their settings equal"
        )
      requests.setdefault(name, request)
      owners.setdefault(name, key)
    parts.append((key, float(cfg.get("weight", 1.0)), objective))
  preparers = [o.prepare for _, _, o in parts if o.prepare is not None]

  def prepare(example, out, preprocess, rng):
    fields = {}
    for fn in preparers:
      fields.update(fn(example, out, preprocess, rng))
    return fields

  return CompositeObjective(parts, requests, prepare if preparers else None)
