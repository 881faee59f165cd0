"""Dual-tower image-text model (CLIP, SigLIP, LiT): two encoders, projections, a learnable logit scale."""

import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from vlm_jax.errors import ConfigError
from vlm_jax.models import layers, text, vit


def check_locked(locked):
  for tower in locked:
    if tower not in ("image", "text"):
      raise ConfigError(f"model.locked names {tower!r}, which is not one of: image, text")


def run_tower(locked, name, fn, x, train):
  """fn(x, train) for tower `name`; a locked tower is a fixed feature extractor: eval mode (no dropout) and
  no gradient, so XLA drops its backward pass. The optimizer gives it no update and no state (Experiment)."""
  if name in locked:
    return jax.lax.stop_gradient(fn(x, False))
  return fn(x, train)


# Where the learnable temperature is bounded: `parameter` clamps the parameter to [logit_scale_min,
# logit_scale_max] after every optimizer step (open_clip_train/train.py: `logit_scale.clamp_(0, ln 100)`;
# torchmultimodal's FLAVA loss likewise); `forward` caps it in the forward pass only (no lower bound, and
# no gradient once the raw parameter passes the cap); `none` leaves it free (big_vision's SigLIP).
LOGIT_SCALE_CLAMPS = ("parameter", "forward", "none")


def check_logit_scale_clamp(clamp: str):
  if clamp not in LOGIT_SCALE_CLAMPS:
    raise ConfigError(
      f"model.logit_scale_clamp={clamp!r} is not one of: {', '.join(LOGIT_SCALE_CLAMPS)}"
    )


def logit_scale_in_forward(module):
  """The (log) logit scale a model returns for its losses."""
  if module.logit_scale_clamp == "forward":
    return jnp.minimum(module.logit_scale, module.logit_scale_max)
  return module.logit_scale


def clamp_after_update(module, params):
  """params with the logit scale clamped, for models whose `logit_scale_clamp` is `parameter`."""
  if getattr(module, "logit_scale_clamp", None) != "parameter" or "logit_scale" not in params:
    return params
  low, high = module.logit_scale_min, module.logit_scale_max
  return {**params, "logit_scale": jnp.clip(params["logit_scale"], low, high)}


def l2_normalize(x, eps=1e-12):
  x = x.astype(jnp.float32)
  return x / jnp.sqrt(jnp.maximum(jnp.sum(x * x, axis=-1, keepdims=True), eps * eps))


class TwoTower(nn.Module):
  image: dict  # VisionTransformer fields
  text: dict  # TextTransformer fields
  embed_dim: int = 512
  logit_scale_init: float = math.log(1 / 0.07)
  logit_scale_max: float = math.log(100.0)
  logit_scale_min: float = 0.0  # ln 1, open_clip's lower bound
  logit_scale_clamp: str = "forward"  # parameter | forward | none (LOGIT_SCALE_CLAMPS)
  logit_bias_init: float | None = None  # a learnable bias (SigLIP) when given
  image_head: str = (
    "linear"  # 'none': the pooled image features are the embedding (SigLIP's MAP head)
  )
  text_head_bias: bool = False  # SigLIP's text projection has a bias
  locked: tuple = ()  # towers ('image', 'text') run in eval mode with no gradient (LiT)
  text_mlm_head: bool = False  # an MLM head on the text tower, for mixing in the mlm objective
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  def setup(self):
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    self.image_encoder = vit.VisionTransformer(**self.image, **kw)
    self.text_encoder = text.TextTransformer(**self.text, **kw)
    proj = lambda fan_in: layers.partitioned(
      nn.initializers.normal(fan_in**-0.5), ("embed", "proj")
    )
    check_locked(self.locked)
    check_logit_scale_clamp(self.logit_scale_clamp)
    if self.image_head == "linear":
      self.image_proj = nn.Dense(
        self.embed_dim, use_bias=False, kernel_init=proj(self.image["width"]), **kw
      )
    elif self.image_head == "none":
      if self.image["width"] != self.embed_dim:
        raise ConfigError(
          f"model.image_head='none' needs model.embed_dim == the image width "
          f"({self.image['width']}), got {self.embed_dim}; set one to the other or use 'linear'"
        )
      self.image_proj = lambda x: x
    else:
      raise ConfigError(f"model.image_head={self.image_head!r} is not one of: linear, none")
    self.text_proj = nn.Dense(
      self.embed_dim,
      use_bias=self.text_head_bias,
      kernel_init=proj(self.text["width"]),
      bias_init=layers.partitioned(nn.initializers.zeros, ("proj",)),
      **kw,
    )
    if self.text_mlm_head:
      width, vocab = self.text["width"], self.text["vocab_size"]
      self.text_mlm_transform = nn.Dense(
        width,
        **kw,
        kernel_init=layers.partitioned(nn.initializers.normal(0.02), ("embed", "mlp")),
        bias_init=layers.partitioned(nn.initializers.zeros, ("mlp",)),
      )
      self.text_mlm_ln = layers.layer_norm("text_mlm_ln", **kw)
      self.text_mlm_decoder = nn.Dense(
        vocab,
        **kw,
        kernel_init=layers.partitioned(nn.initializers.normal(0.02), ("mlp", "vocab")),
        bias_init=layers.partitioned(nn.initializers.zeros, ("vocab",)),
      )
    self.logit_scale = self.param(
      "logit_scale",
      layers.partitioned(nn.initializers.constant(self.logit_scale_init), ()),
      (),
      jnp.float32,
    )
    if self.logit_bias_init is not None:
      self.logit_bias = self.param(
        "logit_bias",
        layers.partitioned(nn.initializers.constant(self.logit_bias_init), ()),
        (),
        jnp.float32,
      )

  def encode_image(self, images, train: bool = False):
    embed = lambda x, train: self.image_proj(self.image_encoder(x, train=train)[0])
    return l2_normalize(run_tower(self.locked, "image", embed, images, train))

  def encode_text(self, tokens, train: bool = False):
    embed = lambda x, train: self.text_proj(self.text_encoder(x, train=train)[0])
    return l2_normalize(run_tower(self.locked, "text", embed, tokens, train))

  def text_mlm_logits(self, images, tokens, train: bool = False, positions=None):
    """[batch, length, vocab] MLM logits of the text tower (images unused: the towers are separate); at
    `positions` [batch, k] only, when given."""
    del images
    if not self.text_mlm_head:
      raise ConfigError(
        "set model.text_mlm_head=True to train the text tower with the mlm objective"
      )
    _, hidden = self.text_encoder(tokens, train=train)
    if positions is not None:
      hidden = jnp.take_along_axis(hidden, positions[..., None], axis=1)
    x = self.text_mlm_ln(
      layers.ACTIVATIONS[self.text.get("act", "gelu")](self.text_mlm_transform(hidden))
    )
    return layers.mask_padded_vocab(self.text_mlm_decoder(x), self.text.get("vocab_used"))

  def __call__(self, images, tokens, train: bool = False, requests=None):
    """L2-normalised embeddings and the (log) logit scale; with `model.text_mlm_head`, MLM logits of the text
    tower (at the masked positions of a `masked_text` request)."""
    out = {
      "image_emb": self.encode_image(images, train),
      "text_emb": self.encode_text(tokens, train),
      "logit_scale": logit_scale_in_forward(self),
    }
    if self.logit_bias_init is not None:
      out["logit_bias"] = self.logit_bias
    if self.text_mlm_head:
      masked = (requests or {}).get("masked_text")
      out["text_mlm_logits"] = (
        self.text_mlm_logits(images, tokens, train)
        if masked is None
        else self.text_mlm_logits(images, masked.tokens, train, masked.positions)
      )
    return out
