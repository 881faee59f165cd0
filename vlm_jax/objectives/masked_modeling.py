"""Masked image modeling (MIM) and masked multimodal modeling (MMM, FLAVA).

MIM masks a fraction of each image's patches (replaced by a learned mask token) and predicts, at the
masked patches, either their normalised pixels (MSE, as MAE) or their visual token: the index of the
nearest entry of a k-means patch codebook fitted on the training data (`python -m vlm_jax.tools.codebook`),
trained with cross-entropy, as BEiT/FLAVA do with a dVAE tokenizer that cannot be downloaded here.
MMM masks text tokens and image patches together and predicts both from the multimodal encoder.
"""

import io

import jax.numpy as jnp
import numpy as np
import optax

from vlm_jax import storage
from vlm_jax.errors import ConfigError
from vlm_jax.objectives import masking
from vlm_jax.objectives.base import Objective, Request, need, token_cross_entropy
from vlm_jax.objectives.matching import text_masking
from vlm_jax.registry import OBJECTIVES
from vlm_jax.requests import PatchMask


class MimTargets:
  """What masked patches are trained to predict; config: target ('pixel' or 'codebook'), codebook_path."""

  def __init__(self, config):
    self.kind = config.get("target", "pixel")
    self.codebook = None
    if self.kind == "codebook":
      path = config.get("codebook_path", "")
      if not path or not storage.exists(path):
        raise ConfigError(
          f"MIM target 'codebook' needs codebook_path (got {path!r}); fit one with "
          "`python -m vlm_jax.tools.codebook --config CONFIG --output codebook.npy`"
        )
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
        raise ConfigError(
          f"the model's MIM head predicts {predictions.shape[-1]} values per patch but pixel "
          f"targets have {patches.shape[-1]}; set model.mim_codes=0"
        )
      per_patch = jnp.mean((predictions - patches) ** 2, axis=-1)
      return (per_patch * weights).sum() / count, jnp.float32(-1)
    if predictions.shape[-1] != self.codebook.shape[0]:
      raise ConfigError(
        f"the model's MIM head predicts {predictions.shape[-1]} codes but the codebook has "
        f"{self.codebook.shape[0]}; set model.mim_codes={self.codebook.shape[0]}"
      )
    codes = masking.nearest_code(patches, self.codebook)
    per_patch = optax.softmax_cross_entropy_with_integer_labels(predictions, codes)
    accuracy = ((jnp.argmax(predictions, -1) == codes) * weights).sum() / count
    return (per_patch * weights).sum() / count, accuracy


def patch_masking(rate: float, patch_size: int):
  """The `patch_mask` request: round(rate * patches) random patches of each image (`PatchMask`)."""

  def draw(rng, batch):
    b, h, w, _ = batch["image"].shape
    return PatchMask(masking.mask_patches(rng, b, (h // patch_size) * (w // patch_size), rate))

  return Request(draw, ("patch_mask", rate))


@OBJECTIVES.register("mim")
def build_mim_objective(config, context):
  """Masked image modeling on the image encoder. config: rate (0.4), target, codebook_path."""
  targets, p = MimTargets(config), context.patch_size

  def loss(outputs, inputs):
    predictions = need(outputs, "image_mim", "mim", "use model.name='flava'")
    value, accuracy = targets.loss(predictions, inputs["image"], inputs["patch_mask"].mask, p)
    return value, (
      {"mim_loss": value, "mim_acc": accuracy}
      if targets.kind == "codebook"
      else {"mim_loss": value}
    )

  return Objective(loss, requests={"patch_mask": patch_masking(float(config.get("rate", 0.4)), p)})


@OBJECTIVES.register("mmm")
def build_mmm_objective(config, context):
  """Masked multimodal modeling: text and patches masked together, both predicted by the multimodal
  encoder; loss = MLM + MIM. config: rate (text, 0.15), whole_word, max_predictions, image_rate (0.4),
  target, codebook_path. With an mlm / mim objective of equal rates, the masks are shared (as FLAVA)."""
  targets, p = MimTargets(config), context.patch_size
  text_request, fields, prepare = text_masking(config, context.tokenizer, context.max_len)

  def loss(outputs, inputs):
    masked = inputs["masked_text"]
    logits = need(outputs, "mm_mlm_logits", "mmm", "use model.name='flava'")
    mlm, accuracy, _ = token_cross_entropy(logits, masked.targets, masked.weights)
    mim, _ = targets.loss(outputs["mm_mim"], inputs["image"], inputs["patch_mask"].mask, p)
    return mlm + mim, {
      "mmm_loss": mlm + mim,
      "mmm_text_loss": mlm,
      "mmm_image_loss": mim,
      "mmm_text_acc": accuracy,
    }

  requests = {
    "masked_text": text_request,
    "patch_mask": patch_masking(float(config.get("image_rate", 0.4)), p),
  }
  return Objective(loss, requests=requests, batch_fields=fields, prepare=prepare)
