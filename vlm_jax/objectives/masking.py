"""Masking for masked language / image / multimodal modeling, on device and keyed by the step RNG.

Drawn with `jax.random` on global-shaped arrays, so a batch is masked identically on any number of
devices or processes (the threefry PRNG is partitionable), and a resumed run masks as the uninterrupted
one did.
"""

import math

import jax
import jax.numpy as jnp


def word_start_index(word_start):
  """[batch, length] bool (True where a word begins) -> index of each token's word's first token."""
  positions = jnp.arange(word_start.shape[-1])
  return jax.lax.cummax(jnp.where(word_start, positions, 0), axis=word_start.ndim - 1)


def mask_tokens(
  rng,
  tokens,
  *,
  rate: float,
  mask_id: int,
  vocab_size: int,
  special_ids,
  word_start=None,
  replace_probs=(0.8, 0.1, 0.1),
  max_predictions=None,
):
  """BERT masking: each word (or token) is selected with probability `rate`; a selected token becomes
  `mask_id` (80%), a random token (10%) or stays (10%).

  special_ids: ids never selected (padding, bos, eos, ...). word_start: optional [batch, length] bool; when
  given, whole words are selected together (whole-word masking). Random replacements avoid special ids.
  max_predictions: at most this many tokens per row are selected (BERT's max_predictions_per_seq), the
  words with the lowest draws first, so that only that many positions need the vocabulary projection.
  Returns (masked tokens, selected [batch, length] bool); the targets are the original `tokens` where
  `selected`.
  """
  special_ids = jnp.asarray(list(special_ids), tokens.dtype)
  candidate = ~jnp.isin(tokens, special_ids)
  select_rng, kind_rng, random_rng = jax.random.split(rng, 3)
  draw = jax.random.uniform(select_rng, tokens.shape)
  if word_start is not None:
    # One draw per word: every token reads the draw of its word's first token.
    draw = jnp.take_along_axis(draw, word_start_index(word_start | ~candidate), axis=-1)
  selected = candidate & (draw < rate)
  if max_predictions is not None and max_predictions < tokens.shape[-1]:
    # Ties (the tokens of one word share a draw) are broken by position: a word is cut only at the cap.
    rank = jnp.argsort(jnp.argsort(jnp.where(selected, draw, 2.0), axis=-1, stable=True), axis=-1)
    selected &= rank < max_predictions
  kind = jax.random.uniform(kind_rng, tokens.shape)
  to_mask = kind < replace_probs[0]
  to_random = (kind >= replace_probs[0]) & (kind < replace_probs[0] + replace_probs[1])
  random_tokens = jax.random.randint(random_rng, tokens.shape, 0, vocab_size, tokens.dtype)
  # Redraw specials as a fixed non-special id (the mask id's neighbourhood is irrelevant: 10% of 15%).
  random_tokens = jnp.where(jnp.isin(random_tokens, special_ids), mask_id, random_tokens)
  masked = jnp.where(selected & to_mask, mask_id, tokens)
  masked = jnp.where(selected & to_random, random_tokens, masked)
  return masked, selected


def selected_positions(selected, count: int):
  """[batch, length] bool -> (positions [batch, count] of the selected tokens in order, then unselected
  ones as filler; weights [batch, count]: 1 at selected positions). `count` must bound each row's number."""
  order = jnp.argsort(~selected, axis=-1, stable=True)[..., :count]
  return order, jnp.take_along_axis(selected, order, axis=-1)


def default_max_predictions(length: int, rate: float) -> int:
  """Twice the expected number of masked tokens plus two, at most the length: the cap binds rarely."""
  return min(length, 2 * math.ceil(rate * length) + 2)


def mask_patches(rng, batch: int, num_patches: int, rate: float):
  """[batch, num_patches] bool with exactly round(rate * num_patches) patches masked per image, at random."""
  count = int(round(rate * num_patches))
  ranks = jnp.argsort(jax.random.uniform(rng, (batch, num_patches)), axis=1).argsort(axis=1)
  return ranks < count


def patch_pixels(images, patch_size: int):
  """[batch, H, W, C] -> [batch, patches, p*p*C] in the order VisionTransformer embeds them."""
  b, h, w, c = images.shape
  p = patch_size
  x = images.reshape(b, h // p, p, w // p, p, c).transpose(0, 1, 3, 2, 4, 5)
  return x.reshape(b, (h // p) * (w // p), p * p * c)


def normalized_patches(images, patch_size: int, eps: float = 1e-6):
  """MAE's regression targets: each patch's pixels normalised by that patch's mean and variance."""
  x = patch_pixels(images, patch_size).astype(jnp.float32)
  mean = x.mean(axis=-1, keepdims=True)
  var = x.var(axis=-1, keepdims=True)
  return (x - mean) / jnp.sqrt(var + eps)


def nearest_code(patches, codebook):
  """Index of the nearest codebook row (squared Euclidean) for every patch: [..., D] x [K, D] -> [...]."""
  distances = (
    jnp.sum(patches**2, axis=-1, keepdims=True)
    - 2 * patches @ codebook.T
    + jnp.sum(codebook**2, axis=-1)
  )
  return jnp.argmin(distances, axis=-1)
