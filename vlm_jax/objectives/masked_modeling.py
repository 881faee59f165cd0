"""Masked image modeling (MIM) and masked multimodal modeling (MMM, FLAVA).

MIM masks a fraction of each image's patches (replaced by a learned mask token) and predicts, at the
masked patches, either their normalised pixels (MSE, as MAE) or their visual token: the index of the
nearest entry of a k-means patch codebook fitted on the training data (`python -m vlm_jax.data.codebook`),
trained with cross-entropy, as BEiT/FLAVA do with a dVAE tokenizer that cannot be downloaded here.
MMM masks text tokens and image patches together and predicts both from the multimodal encoder.
"""
import io

import jax
import jax.numpy as jnp
import numpy as np
import optax

from vlm_jax import storage
from vlm_jax.objectives import masking
from vlm_jax.objectives.matching import mlm_setup
from vlm_jax.registry import OBJECTIVES, ConfigError


class MimTargets:
  """What masked patches are trained to predict; config: target ('pixel' or 'codebook'), codebook_path."""

  def __init__(self, config):
    self.kind = config.get("target", "pixel")
    self.codebook = None
    if self.kind == "codebook":
      path = config.get("codebook_path", "")
      if not path or not storage.exists(path):
        raise ConfigError(f"MIM target 'codebook' needs codebook_path (got {path!r}); fit one with "
                          "`python -m vlm_jax.data.codebook --config CONFIG --output codebook.npy`")
      self.codebook = jnp.asarray(np.load(io.BytesIO(storage.read_bytes(path))), jnp.float32)
    elif self.kind != "pixel":
      raise ConfigError(f"unknown MIM target {self.kind!r}; known: pixel, codebook")

  def loss(self, predictions, images, patch_mask, patch_size):
    """(mean loss over masked patches, accuracy for codebook targets or -1)."""
    patches = masking.normalized_patches(images, patch_size)
    weights = patch_mask.astype(jnp.float32)
    count = jnp.maximum(weights.sum(), 1.0)
    if self.kind == "pixel":
      if predictions.shape[-1] != patches.shape[-1]:
        raise ConfigError(f"the model's MIM head predicts {predictions.shape[-1]} values per patch but pixel "
                          f"targets have {patches.shape[-1]}; set model.mim_codes=0")
      per_patch = jnp.mean((predictions - patches) ** 2, axis=-1)
      return (per_patch * weights).sum() / count, jnp.float32(-1)
    if predictions.shape[-1] != self.codebook.shape[0]:
      raise ConfigError(f"the model's MIM head predicts {predictions.shape[-1]} codes but the codebook has "
                        f"{self.codebook.shape[0]}; set model.mim_codes={self.codebook.shape[0]}")
    codes = masking.nearest_code(patches, self.codebook)
    per_patch = optax.softmax_cross_entropy_with_integer_labels(predictions, codes)
    accuracy = ((jnp.argmax(predictions, -1) == codes) * weights).sum() / count
    return (per_patch * weights).sum() / count, accuracy


def _patch_size(model):
  return model.image["patch_size"]


@OBJECTIVES.register("mim")
def build_mim_objective(config, *, mesh, tokenizer=None):
  """Masked image modeling on the image encoder. config: rate (0.4), target, codebook_path."""
  del mesh, tokenizer
  targets, rate = MimTargets(config), float(config.get("rate", 0.4))

  def loss_fn(params, batch, rng, *, model, train):
    mask_rng, dropout_rng = jax.random.split(rng)
    images = batch["image"]
    p = _patch_size(model)
    patch_mask = masking.mask_patches(mask_rng, images.shape[0], (images.shape[1] // p) * (images.shape[2] // p), rate)
    predictions = model.apply({"params": params}, images, batch["text"], patch_mask, train=train,
                              method="image_mim", rngs={"dropout": dropout_rng})
    loss, accuracy = targets.loss(predictions, images, patch_mask, p)
    metrics = {"mim_loss": loss}
    if targets.kind == "codebook":
      metrics["mim_acc"] = accuracy
    return loss, metrics

  return loss_fn


@OBJECTIVES.register("mmm")
def build_mmm_objective(config, *, mesh, tokenizer=None):
  """Masked multimodal modeling: text and patches masked together, both predicted by the multimodal
  encoder; loss = MLM + MIM. config: rate (text, 0.15), whole_word, image_rate (0.4), target, codebook_path."""
  del mesh
  targets, image_rate = MimTargets(config), float(config.get("image_rate", 0.4))
  mask_text, batch_keys = mlm_setup(config, tokenizer)

  def loss_fn(params, batch, rng, *, model, train):
    text_rng, image_rng, dropout_rng = jax.random.split(rng, 3)
    images, tokens = batch["image"], batch["text"]
    p = _patch_size(model)
    masked, selected = mask_text(text_rng, batch)
    patch_mask = masking.mask_patches(image_rng, images.shape[0], (images.shape[1] // p) * (images.shape[2] // p),
                                      image_rate)
    text_logits, patch_predictions = model.apply({"params": params}, images, masked, patch_mask, train=train,
                                                 method="mmm", rngs={"dropout": dropout_rng})
    weights = selected.astype(jnp.float32)
    count = jnp.maximum(weights.sum(), 1.0)
    mlm = (optax.softmax_cross_entropy_with_integer_labels(text_logits, tokens) * weights).sum() / count
    mim, _ = targets.loss(patch_predictions, images, patch_mask, p)
    return mlm + mim, {"mmm_loss": mlm + mim, "mmm_text_loss": mlm, "mmm_image_loss": mim,
                       "mmm_text_acc": ((jnp.argmax(text_logits, -1) == tokens) * weights).sum() / count}

  loss_fn.batch_keys = batch_keys
  return loss_fn
