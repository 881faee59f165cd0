"""Autoregressive decoding shared by every model that writes text.

`greedy` takes a `logits_fn(tokens) -> [batch, length, vocab]` next-token logits at every position
(teacher-forcing form, as models compute them in training) and fills a fixed-length buffer one token per
step inside `lax.fori_loop`, so it jits once for a batch shape. Rows stop at their end-of-sequence token;
what follows is padding.
"""
import jax
import jax.numpy as jnp


def greedy(logits_fn, batch_size: int, max_len: int, *, bos_id: int, eos_id: int, pad_id: int = 0,
           prompt=None):
  """Greedy decoding -> int32 [batch, max_len] starting with bos (or `prompt`'s non-pad prefix).

  prompt: optional int32 [batch, max_len], bos-first, pad after its last token; decoding continues it.
  """
  if prompt is None:
    tokens = jnp.full((batch_size, max_len), pad_id, jnp.int32).at[:, 0].set(bos_id)
  else:
    tokens = prompt.astype(jnp.int32)
  length = (tokens != pad_id).sum(axis=1)            # next position to write, per row
  done = jnp.any(tokens == eos_id, axis=1)

  def step(t, state):
    tokens, done = state
    logits = logits_fn(tokens)[:, t - 1]
    next_token = jnp.argmax(logits, axis=-1).astype(jnp.int32)
    write = (t >= length) & ~done
    tokens = tokens.at[:, t].set(jnp.where(write, next_token, tokens[:, t]))
    return tokens, done | (write & (next_token == eos_id))

  tokens, _ = jax.lax.fori_loop(1, max_len, step, (tokens, done))
  return tokens


def greedy_captions(model, tokenizer, max_len: int):
  """(params, images) -> greedy caption token ids, for a model with `caption_logits(images, tokens)`."""

  def captions(params, images):
    logits_fn = lambda tokens: model.apply({"params": params}, images, tokens, method="caption_logits")
    return greedy(logits_fn, images.shape[0], max_len, bos_id=tokenizer.bos_id, eos_id=tokenizer.eos_id,
                  pad_id=tokenizer.pad_id)

  return captions
