"""Dual-tower image-text model (CLIP): two encoders, linear projections, a learnable logit scale."""
import math
from typing import Any, Optional

import flax.linen as nn
import jax.numpy as jnp

from vlm_jax.models import layers, text, vit


def l2_normalize(x, eps=1e-12):
  x = x.astype(jnp.float32)
  return x / jnp.sqrt(jnp.maximum(jnp.sum(x * x, axis=-1, keepdims=True), eps * eps))


class TwoTower(nn.Module):
  image: dict            # VisionTransformer fields
  text: dict             # TextTransformer fields
  embed_dim: int = 512
  logit_scale_init: float = math.log(1 / 0.07)
  logit_scale_max: float = math.log(100.0)
  logit_bias_init: Optional[float] = None   # a learnable bias (SigLIP) when given
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  def setup(self):
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    self.image_encoder = vit.VisionTransformer(**self.image, **kw)
    self.text_encoder = text.TextTransformer(**self.text, **kw)
    proj = lambda fan_in: layers.partitioned(nn.initializers.normal(fan_in ** -0.5), ("embed", "proj"))
    self.image_proj = nn.Dense(self.embed_dim, use_bias=False, kernel_init=proj(self.image["width"]), **kw)
    self.text_proj = nn.Dense(self.embed_dim, use_bias=False, kernel_init=proj(self.text["width"]), **kw)
    self.logit_scale = self.param("logit_scale", layers.partitioned(nn.initializers.constant(self.logit_scale_init), ()),
                                  (), jnp.float32)
    if self.logit_bias_init is not None:
      self.logit_bias = self.param("logit_bias", layers.partitioned(nn.initializers.constant(self.logit_bias_init), ()),
                                   (), jnp.float32)

  def encode_image(self, images, train: bool = False):
    pooled, _ = self.image_encoder(images, train=train)
    return l2_normalize(self.image_proj(pooled))

  def encode_text(self, tokens, train: bool = False):
    pooled, _ = self.text_encoder(tokens, train=train)
    return l2_normalize(self.text_proj(pooled))

  def __call__(self, images, tokens, train: bool = False):
    """Returns L2-normalised embeddings and the clamped (log) logit scale."""
    out = {"image_emb": self.encode_image(images, train), "text_emb": self.encode_text(tokens, train),
           # Clamped in the forward pass (open_clip clamps the parameter after each step): beyond ln(100)
           # the scale gets no gradient, so it cannot run away.
           "logit_scale": jnp.minimum(self.logit_scale, self.logit_scale_max)}
    if self.logit_bias_init is not None:
      out["logit_bias"] = self.logit_bias
    return out
