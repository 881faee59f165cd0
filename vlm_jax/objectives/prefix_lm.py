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
import optax

from vlm_jax.registry import OBJECTIVES, ConfigError


def suffix_loss(logits, tokens, prefix_len, pad_id: int = 0):
  """Next-token loss on suffix tokens only: logits[:, t] predicts tokens[:, t + 1], counted when t + 1 >=
  prefix_len (per row) and the target is not padding. Returns (mean loss, token accuracy, target count)."""
  logits, targets = logits[:, :-1].astype(jnp.float32), tokens[:, 1:]
  position = jnp.arange(1, tokens.shape[1])[None, :]
  weights = ((targets != pad_id) & (position >= prefix_len[:, None])).astype(jnp.float32)
  count = jnp.maximum(weights.sum(), 1.0)
  losses = optax.softmax_cross_entropy_with_integer_labels(logits, targets)
  accuracy = ((jnp.argmax(logits, axis=-1) == targets) * weights).sum() / count
  return (losses * weights).sum() / count, accuracy, weights.sum()


def sample_prefix_len(rng, tokens, pad_id: int, low: float, high: float):
  """Per row: 1 (the start token) + floor(u * (tokens between start and end)), u ~ U[low, high], at most
  length - 1 so that at least one token is predicted."""
  length = (tokens != pad_id).sum(axis=1)
  u = jax.random.uniform(rng, length.shape, minval=low, maxval=high)
  inner = jnp.maximum(length - 2, 0)
  return jnp.clip(1 + jnp.floor(u * inner).astype(jnp.int32), 1, jnp.maximum(length - 1, 1))


def _pad_id(tokenizer):
  return tokenizer.pad_id if tokenizer is not None else 0


def _logits(model, params, images, tokens, prefix_len, rng, train, **kwargs):
  if not hasattr(model, "prefix_lm_logits"):
    raise ConfigError(f"PrefixLM objectives need a prefix-LM model (simvlm or prefix_lm), not {type(model).__name__}")
  return model.apply({"params": params}, images, tokens, prefix_len, train=train, rngs={"dropout": rng},
                     method="prefix_lm_logits", **kwargs)


@OBJECTIVES.register("prefix_lm")
def build_prefix_lm_objective(config, *, mesh, tokenizer=None):
  """config: prefix_min (0.0), prefix_max (0.5): the prefix's share of the caption; text_only (False)."""
  del mesh
  low, high = float(config.get("prefix_min", 0.0)), float(config.get("prefix_max", 0.5))
  if not 0.0 <= low <= high <= 1.0:
    raise ConfigError(f"prefix_lm needs 0 <= prefix_min <= prefix_max <= 1, got {low}, {high}")
  text_only = bool(config.get("text_only", False))
  pad_id = _pad_id(tokenizer)
  name = "text_lm" if text_only else "prefix_lm"

  def loss_fn(params, batch, rng, *, model, train):
    split_rng, dropout_rng = jax.random.split(rng)
    tokens = batch["text"]
    prefix_len = sample_prefix_len(split_rng, tokens, pad_id, low, high)
    logits = _logits(model, params, batch["image"], tokens, prefix_len, dropout_rng, train, text_only=text_only)
    loss, accuracy, count = suffix_loss(logits, tokens, prefix_len, pad_id)
    return loss, {f"{name}_loss": loss, f"{name}_token_acc": accuracy, f"{name}_tokens": count,
                  f"{name}_prefix_len": prefix_len.mean().astype(jnp.float32)}

  return loss_fn


@OBJECTIVES.register("vqa")
def build_vqa_objective(config, *, mesh, tokenizer=None):
  """Question -> answer as a prefix-LM: the batch's `qa_text` (start, question, answer, end) with the
  question as prefix (`qa_prefix`). Each training example uses one of its questions, drawn per step."""
  del mesh, config
  pad_id = _pad_id(tokenizer)

  def loss_fn(params, batch, rng, *, model, train):
    tokens, prefix_len = batch["qa_text"], batch["qa_prefix"]
    logits = _logits(model, params, batch["image"], tokens, prefix_len, rng, train)
    loss, accuracy, count = suffix_loss(logits, tokens, prefix_len, pad_id)
    return loss, {"vqa_loss": loss, "vqa_token_acc": accuracy, "vqa_tokens": count}

  loss_fn.batch_keys = {"qa"}
  return loss_fn
