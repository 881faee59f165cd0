"""PrefixLM objectives (SimVLM, decoder-only prefix-LMs): the model reads a prefix bidirectionally (image +
the first tokens of the text) and is trained to continue it; only the suffix is scored.

- `prefix_lm`: on captions, the split point is sampled per example from the step RNG: the prefix is the
  start token plus a fraction in [prefix_min, prefix_max] of the caption's tokens, leaving at least one
  token to predict. `text_only=True` hides the image (SimVLM's text-only batches, or training the LM of a
  staged recipe on captions alone); give it its own key and weight to mix it in.
- `vqa`: on question/answer pairs (the embedded data's `questions` / `answers`): the prefix is the start
  token and the question, the suffix the answer and end token.
"""

import jax
import jax.numpy as jnp
import numpy as np

from vlm_jax.errors import ConfigError
from vlm_jax.objectives.base import Objective, Request, need, next_token_loss, normalization
from vlm_jax.registry import OBJECTIVES
from vlm_jax.requests import LMRequest


def sample_prefix_len(rng, tokens, pad_id: int, low: float, high: float):
  """Per row: 1 (the start token) + floor(u * (tokens between start and end)), u ~ U[low, high], at most
  length - 1 so that at least one token is predicted."""
  length = (tokens != pad_id).sum(axis=1)
  u = jax.random.uniform(rng, length.shape, minval=low, maxval=high)
  inner = jnp.maximum(length - 2, 0)
  return jnp.clip(1 + jnp.floor(u * inner).astype(jnp.int32), 1, jnp.maximum(length - 1, 1))


def _pad_id(tokenizer):
  return tokenizer.pad_id if tokenizer is not None else 0


LM_HINT = "use a prefix-LM model (model.name 'simvlm' or 'prefix_lm')"


def lm_request(key: str, tokens_and_prefix, *, text_only: bool = False, parallel=None):
  """The `lm/<key>` request (`vlm_jax.requests.LMRequest`): the model returns outputs['lm/<key>'], logits
  [batch, length, vocab] aligned with the tokens (position t predicts tokens[:, t + 1]).

  tokens_and_prefix(rng, batch) -> (tokens, prefix_len); text_only hides the image; parallel(rng, batch)
  -> [batch] bool (optional): rows whose decoder inputs are all masked and attend to one another (CapPa)."""

  def draw(rng, batch):
    split_rng, parallel_rng = jax.random.split(rng)
    tokens, prefix_len = tokens_and_prefix(split_rng, batch)
    rows = None if parallel is None else parallel(parallel_rng, batch)
    return LMRequest(tokens, prefix_len, parallel=rows, text_only=text_only)

  return Request(draw, ("lm", key))


@OBJECTIVES.register("prefix_lm")
def build_prefix_lm_objective(config, context):
  """config: prefix_min (0.0), prefix_max (0.5): the prefix's share of the caption; text_only (False);
  normalize (per_token | per_example, `base.token_cross_entropy`)."""
  low, high = float(config.get("prefix_min", 0.0)), float(config.get("prefix_max", 0.5))
  if not 0.0 <= low <= high <= 1.0:
    raise ConfigError(f"prefix_lm needs 0 <= prefix_min <= prefix_max <= 1, got {low}, {high}")
  text_only = bool(config.get("text_only", False))
  normalize = normalization(config)
  pad_id = _pad_id(context.tokenizer)
  name = "text_lm" if text_only else "prefix_lm"
  request = f"lm/{context.key}"

  def split(rng, batch):
    return batch["text"], sample_prefix_len(rng, batch["text"], pad_id, low, high)

  def loss(outputs, inputs):
    drawn = inputs[request]
    logits = need(outputs, request, "prefix_lm", LM_HINT)
    value, accuracy, count = next_token_loss(
      logits, drawn.tokens, drawn.prefix_len, pad_id, normalize
    )
    return value, {
      f"{name}_loss": value,
      f"{name}_token_acc": accuracy,
      f"{name}_tokens": count,
      f"{name}_prefix_len": drawn.prefix_len.mean().astype(jnp.float32),
    }

  return Objective(loss, requests={request: lm_request(context.key, split, text_only=text_only)})


def question_answer(example, out, preprocess, rng):
  """Host side of the vqa objective: one of the example's question/answer pairs, drawn per step."""
  del out
  i = int(rng.integers(len(example["questions"]))) if rng is not None else 0
  qa_text, qa_prefix = preprocess.question_answer(example["questions"][i], example["answers"][i])
  return {"qa_text": qa_text, "qa_prefix": qa_prefix}


@OBJECTIVES.register("vqa")
def build_vqa_objective(config, context):
  """Question -> answer as a prefix-LM: the batch's `qa_text` (start, question, answer, end) with the
  question as prefix (`qa_prefix`). Each training example uses one of its questions, drawn per step.
  config: normalize (per_token | per_example)."""
  normalize = normalization(config)
  pad_id = _pad_id(context.tokenizer)
  request = f"lm/{context.key}"

  def loss(outputs, inputs):
    tokens, prefix_len = inputs["qa_text"], inputs["qa_prefix"]
    value, accuracy, count = next_token_loss(
      need(outputs, request, "vqa", LM_HINT), tokens, prefix_len, pad_id, normalize
    )
    return value, {"vqa_loss": value, "vqa_token_acc": accuracy, "vqa_tokens": count}

  split = lambda rng, batch: (batch["qa_text"], batch["qa_prefix"])
  return Objective(
    loss,
    requests={request: lm_request(context.key, split)},
    batch_fields={"qa_text": ((context.max_len,), np.int32), "qa_prefix": ((), np.int32)},
    prepare=question_answer,
  )
