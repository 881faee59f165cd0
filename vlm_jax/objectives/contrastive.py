"""Contrastive image-text losses (CLIP InfoNCE) and their distributed implementations.

`clip_loss` is the reference definition. `clip_loss_global` computes it over the whole global batch and lets
XLA insert the collectives. `clip_loss_local` is open_clip's local loss under `shard_map`: each data shard
gathers all features (with gradient), scores its own rows against every column and offsets its labels
by its shard index, so it holds a [local, global] block of logits instead of [global, global].
"""
import functools

import jax
import jax.numpy as jnp
import optax
from jax.sharding import PartitionSpec as P

from vlm_jax.registry import OBJECTIVES, ConfigError

BATCH_AXES = ("data", "fsdp")


def _cross_entropy(logits, labels):
  return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()


def clip_loss(image_emb, text_emb, logit_scale):
  """Mean of image->text and text->image cross-entropy; logits = exp(logit_scale) * image_emb @ text_emb.T.

  Inputs are L2-normalised [batch, dim] embeddings; row i of each is a matching pair.
  """
  logits = jnp.exp(logit_scale) * image_emb.astype(jnp.float32) @ text_emb.astype(jnp.float32).T
  labels = jnp.arange(logits.shape[0])
  return 0.5 * (_cross_entropy(logits, labels) + _cross_entropy(logits.T, labels))


def _block_metrics(logits, labels, image_emb, text_emb, logit_scale):
  """Metrics of a [rows, columns] logit block whose row r matches column labels[r]."""
  rows, cols = logits.shape   # rows * (cols - 1) passes 2^31 at batch 64k: divided as a float
  positive = jnp.take_along_axis(logits, labels[:, None], axis=1)[:, 0]
  return {
      "i2t_acc": jnp.mean(jnp.argmax(logits, axis=1) == labels),
      "pos_logit": positive.mean(),
      "neg_logit": (logits.sum() - positive.sum()) / float(rows * (cols - 1)) if cols > 1 else jnp.zeros(()),
      "logit_scale": jnp.exp(logit_scale),
      "image_emb_norm": jnp.linalg.norm(image_emb.astype(jnp.float32), axis=-1).mean(),
      "text_emb_norm": jnp.linalg.norm(text_emb.astype(jnp.float32), axis=-1).mean(),
  }


def clip_loss_global(image_emb, text_emb, logit_scale):
  """(loss, metrics) over the global batch; under jit the batch may be sharded any way."""
  logits = jnp.exp(logit_scale) * image_emb.astype(jnp.float32) @ text_emb.astype(jnp.float32).T
  labels = jnp.arange(logits.shape[0])
  loss = 0.5 * (_cross_entropy(logits, labels) + _cross_entropy(logits.T, labels))
  metrics = _block_metrics(logits, labels, image_emb, text_emb, logit_scale)
  metrics["t2i_acc"] = jnp.mean(jnp.argmax(logits, axis=0) == labels)
  return loss, metrics


def clip_loss_local(image_emb, text_emb, logit_scale, *, mesh, axes=BATCH_AXES):
  """(loss, metrics) with each shard scoring local rows against gathered global columns.

  Equal to `clip_loss_global` in value and gradient: `all_gather` is differentiable (its transpose is a
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
      image_emb, text_emb, logit_scale)


CLIP_IMPLEMENTATIONS = {"global": clip_loss_global, "local": clip_loss_local}


def clip_implementation(impl: str, mesh):
  """(image_emb, text_emb, logit_scale) -> (loss, metrics) for config value `impl`: global | local."""
  if impl not in CLIP_IMPLEMENTATIONS:
    raise ConfigError(f"unknown clip impl {impl!r}; known: {', '.join(CLIP_IMPLEMENTATIONS)}")
  if impl == "local":
    return functools.partial(clip_loss_local, mesh=mesh)
  return CLIP_IMPLEMENTATIONS[impl]


@OBJECTIVES.register("clip")
def build_clip_objective(config, *, mesh, tokenizer=None):
  """CLIP objective. config.impl: 'global' (logits over the global batch) or 'local' (shard_map local loss)."""
  del tokenizer
  loss_impl = clip_implementation(config.get("impl", "global"), mesh)

  def loss_fn(params, batch, rng, *, model, train):
    out = model.apply({"params": params}, batch["image"], batch["text"], train=train, rngs={"dropout": rng})
    loss, metrics = loss_impl(out["image_emb"], out["text_emb"], out["logit_scale"])
    return loss, {"clip_loss": loss, **metrics}

  return loss_fn
