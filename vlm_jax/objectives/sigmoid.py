"""SigLIP's pairwise sigmoid loss and its distributed implementations.

`sigmoid_loss` is the reference: every (image, text) pair is a binary problem, positive on the diagonal,
logits = exp(t') * image_emb @ text_emb.T + b, and the loss is minus the summed log-sigmoid over all
pairs divided by the batch size. `sigmoid_loss_global` evaluates it over the global batch and lets XLA
insert the collectives. `sigmoid_loss_ring` never forms more than a [local, local] block of logits: each
data shard scores its images against its own texts, then passes its texts (or images) to its neighbour
with `ppermute` and scores the next block, until every block has been seen (open_clip's neighbour exchange).
Both are exact: equal in value and gradient to the reference on the whole batch.
"""

import functools

import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec as P

from vlm_jax.errors import ConfigError
from vlm_jax.objectives.base import Objective, need
from vlm_jax.objectives.contrastive import BATCH_AXES
from vlm_jax.registry import OBJECTIVES


def _block_logits(image_emb, text_emb, logit_scale, logit_bias):
  return (
    jnp.exp(logit_scale) * image_emb.astype(jnp.float32) @ text_emb.astype(jnp.float32).T
    + logit_bias
  )


def _pair_losses(logits, positive):
  """-log sigmoid(label * logit) per pair; label +1 where `positive`, else -1."""
  return -jax.nn.log_sigmoid(jnp.where(positive, logits, -logits))


def sigmoid_loss(image_emb, text_emb, logit_scale, logit_bias):
  """Reference definition on one device. Rows i of both inputs are a matching pair."""
  logits = _block_logits(image_emb, text_emb, logit_scale, logit_bias)
  n = logits.shape[0]
  return _pair_losses(logits, jnp.eye(n, dtype=bool)).sum() / n


def _metrics(pos_logit_sum, neg_logit_sum, correct, n_rows, n_cols, logit_scale, logit_bias, first):
  """Means over the global batch from globally summed parts. `first` names the rows' modality."""
  return {
    "pos_logit": pos_logit_sum / n_rows,
    "neg_logit": neg_logit_sum
    / float(n_rows * max(n_cols - 1, 1)),  # a float: above 2^31 at batch 64k
    # A row is right when its positive scores above every negative in it (as CLIP's top-1 accuracy).
    f"{first}2{'t' if first == 'i' else 'i'}_acc": correct / n_rows,
    "logit_scale": jnp.exp(logit_scale),
    "logit_bias": logit_bias,
  }


def sigmoid_loss_global(image_emb, text_emb, logit_scale, logit_bias):
  """(loss, metrics) over the global batch; under jit the batch may be sharded any way."""
  logits = _block_logits(image_emb, text_emb, logit_scale, logit_bias)
  n = logits.shape[0]
  eye = jnp.eye(n, dtype=bool)
  loss = _pair_losses(logits, eye).sum() / n
  positive = jnp.diagonal(logits)
  best_negative = jnp.where(eye, -jnp.inf, logits).max(axis=1)
  metrics = _metrics(
    positive.sum(),
    jnp.where(eye, 0.0, logits).sum(),
    (positive > best_negative).sum(),
    n,
    n,
    logit_scale,
    logit_bias,
    "i",
  )
  return loss, metrics


def _ring_schedule(shards: int, bidirectional: bool):
  """(rounds, extra, shifts): `rounds` exchanges in which each buffer moves one shard along its shift
  (+1: to the right; -1: to the left), then `extra` more moves of the first buffer alone."""
  if bidirectional:
    # Round k sees the texts of shards i-k and i+k; with an odd number of other shards the last block
    # comes from the right-moving buffer alone.
    rounds, extra = divmod(shards - 1, 2)
    return rounds, extra, (1, -1)
  return shards - 1, 0, (1,)


def _shift(x, axes, shards, by):
  """Each shard i sends `x` to shard i + by (mod shards)."""
  return jax.lax.ppermute(x, axes, [(i, (i + by) % shards) for i in range(shards)])


def _ring(step, carry, buffers, *, axes, shards, bidirectional):
  """Moves `buffers` (one per shift of the schedule) around the ring, folding `carry, buffer =
  step(carry, buffer)` over every block that arrives. Returns (carry, buffers, signed distances moved)."""
  rounds, extra, shifts = _ring_schedule(shards, bidirectional)
  # The carries accumulate per-shard values: type them as varying over the ring's axes for scan.
  carry = jax.tree.map(lambda x: jax.lax.pcast(x, axes, to="varying"), carry)

  def one_round(state, _):
    carry, buffers = state
    buffers = tuple(_shift(b, axes, shards, by) for b, by in zip(buffers, shifts))
    for k, b in enumerate(buffers):
      carry, b = step(carry, b)
      buffers = buffers[:k] + (b,) + buffers[k + 1 :]
    return (carry, buffers), None

  if rounds:
    (carry, buffers), _ = jax.lax.scan(one_round, (carry, buffers), None, length=rounds)
  for _ in range(extra):
    first = _shift(buffers[0], axes, shards, shifts[0])
    carry, first = step(carry, first)
    buffers = (first,) + buffers[1:]
  distances = (rounds + extra,) + (rounds,) * (len(shifts) - 1)
  return carry, buffers, tuple(d * by for d, by in zip(distances, shifts))


@functools.partial(jax.custom_vjp, nondiff_argnums=(4, 5, 6))
def _off_shard_negatives(img, txt, scale, bias, axes, shards, bidirectional):
  """(summed negative-pair losses, summed logits, best logit per row) over the blocks of this shard's
  images against every other shard's texts, the texts travelling round the ring.

  A custom VJP so that memory stays flat in the number of shards: the backward pass sends the texts round
  again, recomputing each [local, local] block, with their gradient travelling alongside, and finally
  hands each gradient back to the shard that owns the texts. Differentiating through the forward scan
  would instead keep every shard's texts as residuals (shards x local x width per chip). The best logit is
  a metric: its gradient is not propagated (callers stop it).
  """
  return _off_shard_forward(img, txt, scale, bias, axes, shards, bidirectional)


def _off_shard_forward(img, txt, scale, bias, axes, shards, bidirectional):
  def step(carry, chunk):
    loss, total, best = carry
    logits = _block_logits(img, chunk, scale, bias)
    loss = loss + _pair_losses(logits, False).sum()
    return (loss, total + logits.sum(), jnp.maximum(best, logits.max(axis=1))), chunk

  zero = jnp.zeros((), jnp.float32)
  best = jnp.full((img.shape[0],), -jnp.inf, jnp.float32)
  buffers = (txt,) * len(_ring_schedule(shards, bidirectional)[2])
  carry, _, _ = _ring(
    step, (zero, zero, best), buffers, axes=axes, shards=shards, bidirectional=bidirectional
  )
  return carry


def _off_shard_fwd(img, txt, scale, bias, axes, shards, bidirectional):
  out = _off_shard_forward(img, txt, scale, bias, axes, shards, bidirectional)
  return out, (img, txt, scale, bias)


def _off_shard_bwd(axes, shards, bidirectional, residuals, cotangents):
  img, txt, scale, bias = residuals
  g_loss, g_total, _ = cotangents  # the best logit is a metric (stopped by the caller)
  img32 = img.astype(jnp.float32)
  factor = jnp.exp(scale)

  def step(carry, buffer):
    g_img, g_scale, g_bias = carry
    chunk, g_chunk = buffer
    chunk32 = chunk.astype(jnp.float32)
    similarity = img32 @ chunk32.T
    # d softplus(z)/dz = sigmoid(z) for a negative pair; the summed logits add 1 per pair.
    g_logits = g_loss * jax.nn.sigmoid(factor * similarity + bias) + g_total
    g_img = g_img + factor * (g_logits @ chunk32)
    g_chunk = g_chunk + factor * jnp.einsum("ij,id->jd", g_logits, img32)
    g_scale = g_scale + factor * (g_logits * similarity).sum()
    return (g_img, g_scale, g_bias + g_logits.sum()), (chunk, g_chunk)

  zero = jnp.zeros((), jnp.float32)
  n_buffers = len(_ring_schedule(shards, bidirectional)[2])
  g_zero = jax.lax.pcast(jnp.zeros(txt.shape, jnp.float32), axes, to="varying")
  buffers = ((txt, g_zero),) * n_buffers
  (g_img, g_scale, g_bias), buffers, moved = _ring(
    step,
    (jnp.zeros(img.shape, jnp.float32), zero, zero),
    buffers,
    axes=axes,
    shards=shards,
    bidirectional=bidirectional,
  )
  # Each text gradient is on the shard `moved` steps from the texts' owner: send it home.
  g_txt = jnp.zeros(txt.shape, jnp.float32)
  for (_, g_chunk), distance in zip(buffers, moved):
    if distance % shards:
      g_txt = g_txt + _shift(g_chunk, axes, shards, -distance)
  # scale and bias are the same on every shard (invariant): their gradient is the sum over shards.
  g_scale, g_bias = jax.lax.psum((g_scale, g_bias), axes)
  return (
    g_img.astype(img.dtype),
    g_txt.astype(txt.dtype),
    g_scale.astype(jnp.result_type(scale)),
    g_bias.astype(jnp.result_type(bias)),
  )


_off_shard_negatives.defvjp(_off_shard_fwd, _off_shard_bwd)


def sigmoid_loss_ring(
  image_emb,
  text_emb,
  logit_scale,
  logit_bias,
  *,
  mesh,
  axes=BATCH_AXES,
  bidirectional: bool = False,
  exchange: str = "text",
):
  """(loss, metrics) passing one modality's embeddings around the ring of data shards.

  exchange: 'text' keeps images in place and moves texts ('image' the other way round; the summed loss is
  the same). bidirectional: send to both neighbours at once, so (shards - 1) blocks take about half as
  many exchange rounds. The backward pass goes round the ring again (see `_off_shard_negatives`), so a
  chip holds one [local, local] block of logits and a fixed number of [local, width] buffers whatever
  the number of shards.
  """
  if exchange not in ("text", "image"):
    raise ConfigError(f"unknown sigmoid exchange {exchange!r}; known: text, image")
  if exchange == "image":
    image_emb, text_emb = text_emb, image_emb
  axes = tuple(a for a in axes if mesh.shape[a] > 1) or axes[:1]
  shards = 1
  for a in axes:
    shards *= mesh.shape[a]

  def local(img, txt, scale, bias):
    n_global = img.shape[0] * shards
    logits = _block_logits(img, txt, scale, bias)
    eye = jnp.eye(img.shape[0], dtype=bool)
    positive = jnp.diagonal(logits)
    off_loss, off_sum, off_best = _off_shard_negatives(
      img, txt, scale, bias, axes, shards, bidirectional
    )
    loss = _pair_losses(logits, eye).sum() + off_loss
    neg_sum = jnp.where(eye, 0.0, logits).sum() + off_sum
    best_negative = jnp.maximum(
      jnp.where(eye, -jnp.inf, logits).max(axis=1), jax.lax.stop_gradient(off_best)
    )
    sums = jax.lax.psum((loss, positive.sum(), neg_sum, (positive > best_negative).sum()), axes)
    loss, pos_sum, neg_sum, correct = sums
    return loss / n_global, _metrics(
      pos_sum, neg_sum, correct, n_global, n_global, scale, bias, "i" if exchange == "text" else "t"
    )

  spec = P(axes)
  return jax.shard_map(local, mesh=mesh, in_specs=(spec, spec, P(), P()), out_specs=P())(
    image_emb, text_emb, logit_scale, logit_bias
  )


SIGMOID_IMPLEMENTATIONS = ("global", "ring")


@OBJECTIVES.register("sigmoid")
def build_sigmoid_objective(config, context):
  """SigLIP objective. config.impl: 'global' or 'ring' (with `bidirectional`, `exchange`: text|image).

  The model must output a logit bias (TwoTower with logit_bias_init set).
  """
  impl = config.get("impl", "global")
  if impl not in SIGMOID_IMPLEMENTATIONS:
    raise ConfigError(f"unknown sigmoid impl {impl!r}; known: {', '.join(SIGMOID_IMPLEMENTATIONS)}")
  if impl == "global":
    loss_impl = sigmoid_loss_global
  else:
    loss_impl = functools.partial(
      sigmoid_loss_ring,
      mesh=context.mesh,
      bidirectional=config.get("bidirectional", False),
      exchange=config.get("exchange", "text"),
    )

  def loss(outputs, inputs):
    del inputs
    bias = need(outputs, "logit_bias", "sigmoid", "set model.logit_bias_init (SigLIP uses -10)")
    value, metrics = loss_impl(
      outputs["image_emb"], outputs["text_emb"], outputs["logit_scale"], bias
    )
    return value, {"sigmoid_loss": value, **metrics}

  return Objective(loss)
