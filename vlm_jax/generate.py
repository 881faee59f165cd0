"""Autoregressive decoding shared by every model that writes text (CoCa, SimVLM, decoder-only prefix-LMs).

Cached decoding: a model exposes
  decode_context(images) -> context           (whatever its decoder reads: image tokens, encoder output)
  decode(context, tokens, prefill) -> logits  (next-token logits [batch, n, vocab] for a chunk of tokens,
                                               appended to its key/value cache, the `cache` collection)
`prefill=True` marks the prompt chunk (right-padded), which a prefix-LM attends to bidirectionally together
with the image, and an encoder-decoder encodes; it returns the logits after the prompt, [batch, vocab].
`generate` sizes the cache, prefills the prompt and then runs `greedy_search` or `beam_search`, one token
per step under `lax.while_loop`, so it compiles once per batch shape.

`greedy_uncached` recomputes every position at every step from a teacher-forcing `logits_fn`; it is the
reference the cached path is tested against.
"""

import jax
import jax.numpy as jnp

NEG = -1e9  # "impossible" score, as models.layers.NO_TOKEN; finite so that differences stay finite


def _no_pad(logits, pad_id: int):
  """Padding is not a token a model may write (it would take no position and hide from attention)."""
  return logits.at[..., pad_id].set(NEG)


def _in_vocab(logits, vocab_size: int | None):
  """Columns past the tokenizer's vocabulary are no tokens (models mask their own padded columns; a
  tokenizer may also know fewer ids than a converted model's table). None: every column is a token."""
  if vocab_size is None or vocab_size >= logits.shape[-1]:
    return logits
  return jnp.where(jnp.arange(logits.shape[-1]) < vocab_size, logits, NEG)


def greedy_search(step, cache, logits, steps: int, *, eos_id: int, pad_id: int):
  """Greedy continuation of next-token `logits` [batch, vocab] (the prompt's).

  step(cache, tokens [batch, 1]) -> (logits [batch, 1, vocab], cache). Returns int32 [batch, steps]: the
  chosen tokens (never `pad_id`), `pad_id` after each row's `eos_id`. Stops early once every row has ended.
  """
  batch = logits.shape[0]

  def body(state):
    t, tokens, logits, cache, done = state
    token = jnp.where(done, pad_id, jnp.argmax(_no_pad(logits, pad_id), axis=-1).astype(jnp.int32))
    tokens = tokens.at[:, t].set(token)
    done = done | (token == eos_id)
    logits, cache = step(cache, token[:, None])
    return t + 1, tokens, logits[:, -1], cache, done

  state = (0, jnp.full((batch, steps), pad_id, jnp.int32), logits, cache, jnp.zeros((batch,), bool))
  state = jax.lax.while_loop(lambda s: (s[0] < steps) & ~jnp.all(s[4]), body, state)
  return state[1]


def _take_rows(path, x, origin, rows: int):
  """A cache leaf's rows in `origin` order. Layers scanned by `layers.Encoder` (its `blocks` scope) keep
  their cache with a leading layer axis, so their rows are the second axis."""
  axis = 1 if any(getattr(k, "key", None) == "blocks" for k in path) else 0
  if x.ndim > axis and x.shape[axis] == rows:
    return jnp.take(x, origin, axis=axis)
  return x


def beam_search(
  step,
  cache,
  logits,
  steps: int,
  *,
  beams: int,
  eos_id: int,
  pad_id: int,
  length_penalty: float = 0.0,
):
  """Beam search over `batch * beams` rows (each example's prompt repeated `beams` times, example-major).

  Beams are ranked by summed log-probability while searching; the returned beam maximises
  score / ((5 + length) / 6) ** length_penalty (GNMT; 0 = raw score). A beam that has emitted `eos_id`
  only continues with `pad_id` at no cost. Returns (int32 [batch, steps], scores [batch]).
  """
  rows, vocab = logits.shape
  batch = rows // beams
  # Only the first copy of each prompt is live at the start, so the first step picks distinct tokens.
  scores = jnp.tile(jnp.where(jnp.arange(beams) == 0, 0.0, NEG)[None], (batch, 1))
  pad_only = jnp.where(jnp.arange(vocab) == pad_id, 0.0, NEG)
  reorder = lambda origin, tree: jax.tree_util.tree_map_with_path(
    lambda path, x: _take_rows(path, x, origin, rows), tree
  )

  def body(state):
    t, tokens, logits, cache, scores, done, lengths = state
    logp = _no_pad(jax.nn.log_softmax(logits.astype(jnp.float32)), pad_id).reshape(
      batch, beams, vocab
    )
    logp = jnp.where(done[..., None], pad_only, logp)
    top, index = jax.lax.top_k((scores[..., None] + logp).reshape(batch, beams * vocab), beams)
    origin, token = index // vocab, (index % vocab).astype(jnp.int32)
    take = lambda x: jnp.take_along_axis(
      x, origin.reshape(origin.shape + (1,) * (x.ndim - 2)), axis=1
    )
    was_done = take(done)
    tokens = take(tokens).at[:, :, t].set(token)
    lengths = take(lengths) + ~was_done
    done = was_done | (token == eos_id)
    flat_origin = (jnp.arange(batch)[:, None] * beams + origin).reshape(-1)
    logits, cache = step(reorder(flat_origin, cache), token.reshape(-1, 1))
    return t + 1, tokens, logits[:, -1], cache, top, done, lengths

  state = (
    0,
    jnp.full((batch, beams, steps), pad_id, jnp.int32),
    logits,
    cache,
    scores,
    jnp.zeros((batch, beams), bool),
    jnp.zeros((batch, beams), jnp.int32),
  )
  state = jax.lax.while_loop(lambda s: (s[0] < steps) & ~jnp.all(s[5]), body, state)
  _, tokens, _, _, scores, _, lengths = state
  normalised = scores / ((5.0 + lengths) / 6.0) ** length_penalty
  best = jnp.argmax(normalised, axis=1)
  return jnp.take_along_axis(tokens, best[:, None, None], axis=1)[:, 0], jnp.take_along_axis(
    scores, best[:, None], 1
  )[:, 0]


def generate(
  model,
  params,
  images,
  prompt,
  steps: int,
  *,
  eos_id: int,
  pad_id: int,
  beams: int = 1,
  length_penalty: float = 0.0,
  vocab_size: int | None = None,
):
  """Continue `prompt` (int32 [batch, P], right-padded with `pad_id`) for up to `steps` tokens with the
  model's key/value cache. Returns int32 [batch, steps]: the new tokens, padded after eos. vocab_size: the
  tokenizer's; ids from there on (the padded columns) are never written."""
  context = model.apply({"params": params}, images, method="decode_context")
  if beams > 1:
    context = jax.tree.map(lambda x: jnp.repeat(x, beams, axis=0), context)
    prompt = jnp.repeat(prompt, beams, axis=0)
  call = lambda cache, tokens, prefill: model.apply(
    {"params": params, "cache": cache}, context, tokens, prefill, method="decode", mutable=["cache"]
  )
  # A call on a full-length input sizes the cache; eval_shape gets its shapes without computing anything.
  full = jnp.zeros((prompt.shape[0], prompt.shape[1] + steps), jnp.int32)
  shapes = jax.eval_shape(
    lambda: model.apply(
      {"params": params}, context, full, True, method="decode", mutable=["cache"]
    )[1]["cache"]
  )
  cache = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)
  logits, state = call(cache, prompt, True)
  logits = _in_vocab(logits, vocab_size)

  def step(cache, tokens):
    logits, state = call(cache, tokens, False)
    return _in_vocab(logits, vocab_size), state["cache"]

  if beams == 1:
    return greedy_search(step, state["cache"], logits, steps, eos_id=eos_id, pad_id=pad_id)
  tokens, _ = beam_search(
    step,
    state["cache"],
    logits,
    steps,
    beams=beams,
    eos_id=eos_id,
    pad_id=pad_id,
    length_penalty=length_penalty,
  )
  return tokens


def greedy_uncached(
  logits_fn,
  batch_size: int,
  max_len: int,
  *,
  bos_id: int,
  eos_id: int,
  pad_id: int = 0,
  prompt=None,
  vocab_size: int | None = None,
):
  """Reference greedy decoding without a cache -> int32 [batch, max_len] starting with bos (or `prompt`'s
  non-pad prefix). logits_fn(tokens [batch, max_len]) -> next-token logits at every position.
  """
  if prompt is None:
    tokens = jnp.full((batch_size, max_len), pad_id, jnp.int32).at[:, 0].set(bos_id)
  else:
    tokens = prompt.astype(jnp.int32)
  length = (tokens != pad_id).sum(axis=1)  # next position to write, per row
  done = jnp.any(tokens == eos_id, axis=1)

  def step(t, state):
    tokens, done = state
    logits = _no_pad(_in_vocab(logits_fn(tokens)[:, t - 1], vocab_size), pad_id)
    next_token = jnp.argmax(logits, axis=-1).astype(jnp.int32)
    write = (t >= length) & ~done
    tokens = tokens.at[:, t].set(jnp.where(write, next_token, tokens[:, t]))
    return tokens, done | (write & (next_token == eos_id))

  tokens, _ = jax.lax.fori_loop(1, max_len, step, (tokens, done))
  return tokens


def captioner(model, tokenizer, max_len: int, beams: int = 1, length_penalty: float = 0.0):
  """(params, images) -> int32 [batch, max_len]: bos, then the caption the model writes (cached decoding)."""

  def captions(params, images):
    bos = jnp.full((images.shape[0], 1), tokenizer.bos_id, jnp.int32)
    out = generate(
      model,
      params,
      images,
      bos,
      max_len - 1,
      eos_id=tokenizer.eos_id,
      pad_id=tokenizer.pad_id,
      beams=beams,
      length_penalty=length_penalty,
      vocab_size=getattr(tokenizer, "vocab_size", None),
    )
    return jnp.concatenate([bos, out], axis=1)

  return captions
