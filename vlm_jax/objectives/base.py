"""The two types every objective is made of (see `vlm_jax.objectives`)."""

from collections.abc import Callable
import dataclasses
from typing import Any

import jax.numpy as jnp
import optax

from vlm_jax.errors import ConfigError


@dataclasses.dataclass(frozen=True)
class Context:
  """What a builder may know besides its own config: `builder(config, context) -> Objective`."""

  key: str  # the objective's key in config.objectives (its metric names may use it)
  mesh: Any = None
  tokenizer: Any = None
  max_len: int = 0  # the text length of the batch
  patch_size: int = 0  # the image tower's patch size (masked image modeling)


@dataclasses.dataclass(frozen=True)
class Request:
  """An extra model input, drawn on device once per step: `draw(rng, batch) -> value`. `spec` (hashable)
  says how it is drawn; two objectives asking for one name must give equal specs."""

  draw: Callable
  spec: Any = None


@dataclasses.dataclass(frozen=True)
class Objective:
  """loss(outputs, inputs) -> (loss, metrics), where `outputs` is the model's output dict and `inputs` the
  batch with every drawn request added under its name."""

  loss: Callable
  requests: dict = dataclasses.field(default_factory=dict)  # name -> Request
  batch_fields: dict = dataclasses.field(
    default_factory=dict
  )  # what `prepare` adds: name -> (shape, dtype)
  prepare: Callable | None = None  # (example, out, preprocess, rng) -> fields


def need(outputs: dict, name: str, objective: str, hint: str):
  """outputs[name], or a config error naming the objective and the model it needs."""
  if name not in outputs:
    raise ConfigError(
      f"the {objective} objective needs the model output {name!r}, which this model does not "
      f"give; {hint}"
    )
  return outputs[name]


NORMALIZATIONS = ("per_token", "per_example")


def normalization(config, default: str = "per_token") -> str:
  """A token loss's `normalize` setting, checked."""
  value = config.get("normalize", default)
  if value not in NORMALIZATIONS:
    raise ConfigError(f"unknown normalize {value!r}; known: {', '.join(NORMALIZATIONS)}")
  return value


def token_cross_entropy(logits, targets, weights, normalize: str = "per_token"):
  """The one token-level cross-entropy of the project (MLM, MMM, captioning, prefix-LM, CapPa).

  logits [batch, length, vocab], integer targets [batch, length], weights [batch, length] (1 where a token
  counts). normalize: `per_token` averages over every counted token of the batch (PyTorch's
  `CrossEntropyLoss(ignore_index=pad)`, open_clip's CoCa); `per_example` averages each row over its counted
  tokens, then the rows (big_vision's `weighted_softmax_xent(normalize=True)`, CapPa). Returns (loss, the
  counted tokens' accuracy, their number).
  """
  weights = weights.astype(jnp.float32)
  count = jnp.maximum(weights.sum(), 1.0)
  logits = logits.astype(jnp.float32)
  losses = optax.softmax_cross_entropy_with_integer_labels(logits, targets) * weights
  accuracy = ((jnp.argmax(logits, axis=-1) == targets) * weights).sum() / count
  if normalize == "per_example":
    value = (losses.sum(axis=-1) / jnp.maximum(weights.sum(axis=-1), 2e-38)).mean()
  else:
    value = losses.sum() / count
  return value, accuracy, weights.sum()


def next_token_loss(logits, tokens, prefix_len=None, pad_id: int = 0, normalize: str = "per_token"):
  """Teacher-forced next-token loss: logits[:, t] predicts tokens[:, t + 1], counted when the target is not
  padding and t + 1 >= prefix_len (per row). Captioning is the empty prefix (prefix_len None)."""
  targets = tokens[:, 1:]
  weights = targets != pad_id
  if prefix_len is not None:
    weights &= jnp.arange(1, tokens.shape[1])[None, :] >= prefix_len[:, None]
  return token_cross_entropy(logits[:, :-1], targets, weights, normalize)
