"""Contrastive image-text loss (CLIP InfoNCE), one entry with two distributed implementations.

`clip_loss(..., impl='global')` computes it over the whole global batch and lets XLA insert the
collectives. `impl='local'` is open_clip's local loss under `shard_map`: each data shard gathers all
features (with gradient), scores its own rows against every column and offsets its labels by its shard
index, so it holds a [local, global] block of logits instead of [global, global].
"""

import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec as P
import optax

from vlm_jax.errors import ConfigError
from vlm_jax.objectives.base import Objective, need
from vlm_jax.registry import OBJECTIVES

BATCH_AXES = ("data", "fsdp")
CLIP_IMPLEMENTATIONS = ("global", "local")


def _cross_entropy(logits, labels):
  return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()


def _block_metrics(logits, labels, image_emb, text_emb, logit_scale):
  """Metrics of a [rows, columns] logit block whose row r matches column labels[r]."""
  rows, cols = logits.shape  # rows * (cols - 1) passes 2^31 at batch 64k: divided as a float
  positive = jnp.take_along_axis(logits, labels[:, None], axis=1)[:, 0]
  return {
    "i2t_acc": jnp.mean(jnp.argmax(logits, axis=1) == labels),
    "pos_logit": positive.mean(),
    "neg_logit": (logits.sum() - positive.sum()) / float(rows * (cols - 1))
    if cols > 1
    else jnp.zeros(()),
    "logit_scale": jnp.exp(logit_scale),
    "image_emb_norm": jnp.linalg.norm(image_emb.astype(jnp.float32), axis=-1).mean(),
    "text_emb_norm": jnp.linalg.norm(text_emb.astype(jnp.float32), axis=-1).mean(),
  }


def clip_loss(image_emb, text_emb, logit_scale, *, impl: str = "global", mesh=None):
  """CLIP's InfoNCE: (mean of image->text and text->image cross-entropy, metrics), with logits =
  exp(logit_scale) * image_emb @ text_emb.T over L2-normalised [batch, dim] embeddings whose row i is a pair.

  impl: 'global' (the [batch, batch] logits; under jit the batch may be sharded any way) or 'local' (each
  shard scores its rows against gathered columns, `_clip_loss_local`; needs the mesh). Equal in value and
  gradient.
  """
  if impl not in CLIP_IMPLEMENTATIONS:
    raise ConfigError(f"unknown clip impl {impl!r}; known: {', '.join(CLIP_IMPLEMENTATIONS)}")
  if impl == "local":
    return _clip_loss_local(image_emb, text_emb, logit_scale, mesh=mesh)
  logits = jnp.exp(logit_scale) * image_emb.astype(jnp.float32) @ text_emb.astype(jnp.float32).T
  labels = jnp.arange(logits.shape[0])
  loss = 0.5 * (_cross_entropy(logits, labels) + _cross_entropy(logits.T, labels))
  metrics = _block_metrics(logits, labels, image_emb, text_emb, logit_scale)
  metrics["t2i_acc"] = jnp.mean(jnp.argmax(logits, axis=0) == labels)
  return loss, metrics


def _clip_loss_local(image_emb, text_emb, logit_scale, *, mesh, axes=BATCH_AXES):
  """(loss, metrics) with each shard scoring local rows against gathered global columns.

  Equal to the global loss in value and gradient: `all_gather` is differentiable (its transpose is a
  reduce-scatter), so each shard's rows also receive the gradient that flows through other shards' columns.
  """
  axes = tuple(a for a in axes if mesh.shape[a] > 1) or axes[:1]

  def local(img, txt, scale):
    n = img.shape[0]
    offset = jax.lax.axis_index(axes) * n
    labels = offset + jnp.arange(n)
    all_img = jax.lax.all_gather(img, axes, tiled=True)
    all_txt = jax.lax.all_gather(txt, axes, tiled=True)
    logits_i2t = jnp.exp(scale) * img.astype(jnp.float32) @ all_txt.astype(jnp.float32).T
    logits_t2i = jnp.exp(scale) * txt.astype(jnp.float32) @ all_img.astype(jnp.float32).T
    loss = 0.5 * (_cross_entropy(logits_i2t, labels) + _cross_entropy(logits_t2i, labels))
    metrics = _block_metrics(logits_i2t, labels, img, txt, scale)
    metrics["t2i_acc"] = jnp.mean(jnp.argmax(logits_t2i, axis=1) == labels)
    # Every shard holds the same number of rows, so the mean of shard means is the global mean.
    return jax.lax.pmean((loss, metrics), axes)

  spec = P(axes)
  return jax.shard_map(local, mesh=mesh, in_specs=(spec, spec, P()), out_specs=P())(
    image_emb, text_emb, logit_scale
  )


@OBJECTIVES.register("clip")
def build_clip_objective(config, context):
  """CLIP objective. config.impl: 'global' (logits over the global batch) or 'local' (shard_map local loss)."""
  impl = config.get("impl", "global")
  if impl not in CLIP_IMPLEMENTATIONS:
    raise ConfigError(f"unknown clip impl {impl!r}; known: {', '.join(CLIP_IMPLEMENTATIONS)}")

  def loss(outputs, inputs):
    del inputs
    value, metrics = clip_loss(
      need(outputs, "image_emb", "clip", "use a model with both towers"),
      outputs["text_emb"],
      outputs["logit_scale"],
      impl=impl,
      mesh=context.mesh,
    )
    return value, {"clip_loss": value, **metrics}

  return Objective(loss)
