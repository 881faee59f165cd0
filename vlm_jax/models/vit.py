"""Vision Transformer (CLIP flavour: class token, pre-LN, post-LN on the pooled token)."""

from typing import Any

import einops
import flax.linen as nn
import jax.numpy as jnp

from vlm_jax.errors import ConfigError
from vlm_jax.models import layers

# name: (width, depth, heads, mlp_dim). "tiny"/"micro" are for CPU runs and tests.
SIZES = {
  "micro": (64, 2, 2, 256),
  "tiny": (128, 4, 4, 512),
  "Ti": (192, 12, 3, 768),
  "S": (384, 12, 6, 1536),
  "M": (512, 12, 8, 2048),
  "B": (768, 12, 12, 3072),
  "L": (1024, 24, 16, 4096),
  "So400m": (
    1152,
    27,
    16,
    4304,
  ),  # SigLIP's shape-optimised ViT (arXiv:2305.13035), big_vision's vit.py
  "H": (1280, 32, 16, 5120),
  "g": (1408, 40, 16, 6144),  # ViT-g (arXiv:2106.04560 Table 2), open_clip's ViT-g-14
}


def parse_variant(variant: str) -> dict:
  """'B/32' -> width/depth/heads/mlp_dim/patch_size."""
  size, _, patch = variant.partition("/")
  if size not in SIZES or not patch.isdigit():
    raise ConfigError(
      f"unknown ViT variant {variant!r}; write SIZE/PATCH with SIZE in {', '.join(SIZES)}, "
      "e.g. 'B/32' or 'tiny/4'"
    )
  width, depth, heads, mlp_dim = SIZES[size]
  return dict(width=width, depth=depth, num_heads=heads, mlp_dim=mlp_dim, patch_size=int(patch))


class VisionTransformer(nn.Module):
  width: int
  depth: int
  num_heads: int
  mlp_dim: int
  patch_size: int
  image_size: int = 224
  # cls | gap | map (attention-pooled, SigLIP) | none | unpooled (the class token kept and every token
  # returned before the final LayerNorm, for a pooler outside the tower: open_clip's CoCa)
  pool: str = "cls"
  act: str = "gelu"
  ln_pre: bool = True
  patch_bias: bool = False  # CLIP's patchify convolution has no bias; SigLIP's has one
  ln_eps: float = 1e-5
  norm_tokens: bool = (
    False  # also LayerNorm the returned tokens (FLAVA); else only the pooled output
  )
  mask_token: bool = False  # a learned token that replaces masked patches (masked image modeling)
  dropout: float = 0.0
  remat: str = "none"
  scan: bool = False
  attention: str = "auto"  # layers.attention_implementation
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, images, train: bool = False, patch_mask=None, return_hidden: bool = False):
    """images: [batch, H, W, 3] float -> (pooled [batch, width] or None, tokens [batch, n, width]).

    patch_mask: optional [batch, patches] bool; masked patches are replaced by the mask token.
    return_hidden: also return the last block's output before the final LayerNorm (with the class token),
    which FLAVA feeds to its multimodal encoder.
    """
    if images.shape[1] != self.image_size or images.shape[2] != self.image_size:
      raise ConfigError(
        f"the model expects {self.image_size}x{self.image_size} images (model.image.image_size), "
        f"the data gives {images.shape[1:3]} (data.image_size); make them equal"
      )
    layers.check_patch_grid(self.image_size, self.patch_size)
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    p = self.patch_size
    patches = einops.rearrange(
      images.astype(self.dtype), "b (h p) (w q) c -> b (h w) (p q c)", p=p, q=p
    )
    # A patchify convolution is a dense layer over flattened patches; CLIP's has no bias.
    x = nn.Dense(
      self.width,
      use_bias=self.patch_bias,
      name="patch_embed",
      **kw,
      kernel_init=layers.partitioned(nn.initializers.lecun_normal(), ("patch", "embed")),
    )(patches)
    n = x.shape[1]
    scale = self.width**-0.5
    if self.mask_token:
      token = self.param(
        "mask_token",
        layers.partitioned(nn.initializers.normal(0.02), ("embed",)),
        (self.width,),
        self.param_dtype,
      )
      if patch_mask is not None:
        x = jnp.where(patch_mask[..., None], token.astype(self.dtype), x)
    elif patch_mask is not None:
      raise ConfigError(
        "patch masking (mim, mmm) needs a mask token: set model.image.mask_token=True"
      )
    if self.pool in ("cls", "unpooled"):
      cls = self.param(
        "cls_token",
        layers.partitioned(nn.initializers.normal(scale), ("embed",)),
        (self.width,),
        self.param_dtype,
      )
      x = jnp.concatenate(
        [jnp.broadcast_to(cls.astype(self.dtype), (x.shape[0], 1, self.width)), x], axis=1
      )
      n += 1
    pos = self.param(
      "pos_embed",
      layers.partitioned(nn.initializers.normal(scale), ("length", "embed")),
      (n, self.width),
      self.param_dtype,
    )
    x = x + pos.astype(self.dtype)[None]
    x = layers.constrain(x, ("batch", "length", "embed"))
    if self.ln_pre:
      x = layers.layer_norm("ln_pre", eps=self.ln_eps, **kw)(x)
    x = nn.Dropout(self.dropout)(x, deterministic=not train)
    x = layers.Encoder(
      self.depth,
      self.num_heads,
      self.mlp_dim,
      act=self.act,
      dropout=self.dropout,
      ln_eps=self.ln_eps,
      remat=self.remat,
      scan=self.scan,
      attention=self.attention,
      name="encoder",
      **kw,
    )(x, None, not train)
    hidden = x
    ln_post = layers.layer_norm("ln_post", eps=self.ln_eps, **kw)
    if self.pool == "cls":
      if self.norm_tokens:
        x = ln_post(x)
        out = x[:, 0], x[:, 1:]
      else:
        out = ln_post(x[:, 0]), x[:, 1:]
    elif self.pool == "gap":
      out = ln_post(x.mean(axis=1)), x
    elif self.pool == "map":
      x = ln_post(x)
      pooled = layers.AttentionPool(
        1,
        self.num_heads,
        self.mlp_dim,
        act=self.act,
        ln_eps=self.ln_eps,
        name="map_head",
        attention=self.attention,
        **kw,
      )(x)
      out = pooled[:, 0], x
    elif self.pool == "none":
      out = None, ln_post(x)
    elif self.pool == "unpooled":
      out = None, x
    else:
      raise ConfigError(
        f"model.image.pool={self.pool!r} is not one of: cls, gap, map, none, unpooled"
      )
    return (*out, hidden) if return_hidden else out
