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
  many exchange rounds. Each round is rematerialised in the backward pass, so only [local, local] logits
  are ever live.
  """
  if exchange not in ("text", "image"):
    raise ConfigError(f"unknown sigmoid exchange {exchange!r}; known: text, image")
  if exchange == "image":
    image_emb, text_emb = text_emb, image_emb
  axes = tuple(a for a in axes if mesh.shape[a] > 1) or axes[:1]
  shards = 1
  for a in axes:
    shards *= mesh.shape[a]
  to_right = [(i, (i + 1) % shards) for i in range(shards)]
  to_left = [(i, (i - 1) % shards) for i in range(shards)]

  def local(img, txt, scale, bias):
    n_local = img.shape[0]
    n_global = n_local * shards

    @jax.checkpoint
    def negatives(chunk):
      logits = _block_logits(img, chunk, scale, bias)
      return _pair_losses(logits, False).sum(), logits.sum(), logits.max(axis=1)

    logits = _block_logits(img, txt, scale, bias)
    eye = jnp.eye(n_local, dtype=bool)
    loss = _pair_losses(logits, eye).sum()
    positive = jnp.diagonal(logits)
    neg_sum = jnp.where(eye, 0.0, logits).sum()
    best_negative = jnp.where(eye, -jnp.inf, logits).max(axis=1)

    def add(carry, chunk):
      loss, neg_sum, best = carry
      block_loss, block_sum, block_max = negatives(chunk)
      return loss + block_loss, neg_sum + block_sum, jnp.maximum(best, block_max)

    carry = (loss, neg_sum, best_negative)
    if bidirectional:
      # Round k sees the texts of shards i-k and i+k; with an odd number of other shards the last
      # round has one block left, taken from the right-moving buffer only.
      rounds, extra = divmod(shards - 1, 2)

      def both_ways(state, _):
        carry, right, left = state
        right = jax.lax.ppermute(right, axes, to_right)
        left = jax.lax.ppermute(left, axes, to_left)
        carry = add(add(carry, right), left)
        return (carry, right, left), None

      (carry, right, _), _ = jax.lax.scan(both_ways, (carry, txt, txt), None, length=rounds)
      if extra:
        carry = add(carry, jax.lax.ppermute(right, axes, to_right))
    else:

      def one_way(state, _):
        carry, chunk = state
        chunk = jax.lax.ppermute(chunk, axes, to_right)
        return (add(carry, chunk), chunk), None

      (carry, _), _ = jax.lax.scan(one_way, (carry, txt), None, length=shards - 1)
    loss, neg_sum, best_negative = carry
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
