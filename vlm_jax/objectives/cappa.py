"""CapPa (Tschannen et al. 2023, "Image Captioners Are Scalable Vision Learners Too"; big_vision's cappa).

A captioner trained with a mix of autoregressive and parallel prediction: for a fraction `parallel_fraction`
of the examples (0.75 in the paper) every decoder input is the model's mask token and the decoder attends to
all positions instead of causally, so each position must predict its token from the image alone; the other
examples are trained autoregressively (teacher forcing). One cross-entropy over every caption token of
both kinds, normalised per caption as big_vision's trainer does (`normalize=per_example`: each caption's
mean over its tokens, then the batch mean). Works on any prefix-LM model with a mask token
(`model.text.mask_token=True`); the encoder-decoder with big_vision's options (`experiments/cappa_b16.py`)
is CapPa's architecture.
"""

import jax
import jax.numpy as jnp

from vlm_jax.errors import ConfigError
from vlm_jax.objectives.base import Objective, need, normalization, token_cross_entropy
from vlm_jax.objectives.prefix_lm import LM_HINT, lm_request
from vlm_jax.registry import OBJECTIVES


@OBJECTIVES.register("cappa")
def build_cappa_objective(config, context):
  """config: parallel_fraction (0.75): the share of examples predicted in parallel, drawn per step;
  normalize (per_example, big_vision's | per_token)."""
  fraction = float(config.get("parallel_fraction", 0.75))
  if not 0.0 <= fraction <= 1.0:
    raise ConfigError(f"cappa.parallel_fraction must be in [0, 1], got {fraction}")
  normalize = normalization(config, default="per_example")
  pad_id = context.tokenizer.pad_id if context.tokenizer is not None else 0
  request = f"lm/{context.key}"

  def caption(rng, batch):
    del rng
    tokens = batch["text"]
    return tokens, jnp.ones(tokens.shape[:1], jnp.int32)  # the start token is the whole prefix

  def parallel_rows(rng, batch):
    return jax.random.uniform(rng, batch["text"].shape[:1]) < fraction

  def loss(outputs, inputs):
    drawn = inputs[request]
    logits = need(outputs, request, "cappa", LM_HINT)[:, :-1]
    tokens, parallel = drawn.tokens, drawn.parallel
    targets = tokens[:, 1:]
    counted = targets != pad_id
    value, accuracy, count = token_cross_entropy(logits, targets, counted, normalize)
    # Each kind's loss over its own rows (a metric; the loss above weighs them together).
    by_kind = {
      kind: token_cross_entropy(logits, targets, counted & rows[:, None], "per_token")[0]
      for kind, rows in (("parallel", parallel), ("ar", ~parallel))
    }
    return value, {
      "cappa_loss": value,
      "cappa_token_acc": accuracy,
      "cappa_tokens": count,
      "cappa_parallel_loss": by_kind["parallel"],
      "cappa_ar_loss": by_kind["ar"],
      "cappa_parallel_fraction": parallel.mean(),
    }

  # Parallel rows read only the model's mask token: no text context at all, as big_vision's
  # masking_ratio=1.
  return Objective(
    loss, requests={request: lm_request(context.key, caption, parallel=parallel_rows)}
  )
