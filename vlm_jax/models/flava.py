"""FLAVA: an image encoder, a text encoder and a multimodal encoder over both, with heads for every
objective FLAVA trains: contrastive (projections + logit scale), masked image modeling (on the image
encoder), masked language modeling (on the text encoder), masked multimodal modeling (text and image
positions of the multimodal encoder) and image-text matching (on the multimodal [CLS]).

MIM heads predict either normalised pixels of each patch (`mim_codes=0`, MAE-style regression) or one of
`mim_codes` visual tokens from a k-means patch codebook (`python -m vlm_jax.tools.codebook`).
"""

import math
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from vlm_jax.models import layers, text, two_tower, vit
from vlm_jax.models.two_tower import l2_normalize


class PredictionHead(nn.Module):
  """BERT's masked-prediction head, as FLAVA's MLM / MIM / MMM heads: dense -> activation -> LayerNorm ->
  decoder to `features` outputs."""

  features: int
  out_axis: str  # logical axis of the outputs: vocab (words) or mlp (visual codes, pixels)
  act: str = "gelu"
  ln_eps: float = 1e-5
  used: int | None = (
    None  # for vocabulary heads: the tokenizer's vocabulary (layers.mask_padded_vocab)
  )
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    dense = lambda n, axes, name: nn.Dense(
      n,
      kernel_init=layers.partitioned(nn.initializers.normal(0.02), axes),
      bias_init=layers.partitioned(nn.initializers.zeros, axes[1:]),
      name=name,
      **kw,
    )
    x = layers.ACTIVATIONS[self.act](dense(x.shape[-1], ("embed", "mlp"), "transform")(x))
    x = layers.layer_norm("ln", eps=self.ln_eps, **kw)(x)
    in_axis = "embed" if self.out_axis == "mlp" else "mlp"  # an axis name may occur once per array
    return layers.mask_padded_vocab(
      dense(self.features, (in_axis, self.out_axis), "decoder")(x), self.used
    )


class Flava(nn.Module):
  image: dict  # VisionTransformer fields (class token; tokens are LayerNormed)
  text: dict  # TextTransformer fields (bidirectional, first-token pooling, embedding LayerNorm)
  multimodal: dict  # width, depth, num_heads, mlp_dim
  embed_dim: int = 768
  mim_codes: int = 0  # 0: regress normalised pixels; K: classify into K codebook entries
  logit_scale_init: float = math.log(1 / 0.07)
  logit_scale_max: float = math.log(100.0)
  logit_scale_min: float = 0.0
  logit_scale_clamp: str = "forward"  # two_tower.LOGIT_SCALE_CLAMPS
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  def setup(self):
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    two_tower.check_logit_scale_clamp(self.logit_scale_clamp)
    # As FLAVA's image encoder: no pre-LayerNorm, a biased patch embedding (overridable in config).
    self.image_encoder = vit.VisionTransformer(
      **{
        "ln_pre": False,
        "patch_bias": True,
        **self.image,
        "pool": "cls",
        "norm_tokens": True,
        "mask_token": True,
      },
      **kw,
    )
    self.text_encoder = text.TextTransformer(
      **{"embed_ln": True, **self.text, "causal": False, "pool": "first"}, **kw
    )
    normal = lambda axes, std=0.02: layers.partitioned(nn.initializers.normal(std), axes)
    dense = lambda n, axes, **k: nn.Dense(
      n,
      kernel_init=normal(axes),
      **k,
      **kw,
      bias_init=layers.partitioned(nn.initializers.zeros, axes[1:]),
    )
    mm = self.multimodal["width"]
    self.image_proj = dense(self.embed_dim, ("embed", "proj"))
    self.text_proj = dense(self.embed_dim, ("embed", "proj"))
    self.logit_scale = self.param(
      "logit_scale",
      layers.partitioned(nn.initializers.constant(self.logit_scale_init), ()),
      (),
      jnp.float32,
    )
    self.image_to_mm = dense(mm, ("embed", "mlp"))
    self.text_to_mm = dense(mm, ("embed", "mlp"))
    self.mm_cls = self.param("mm_cls", normal(("embed",)), (mm,), self.param_dtype)
    fields = {k: v for k, v in self.multimodal.items() if k != "width"}
    fields.setdefault("act", self.text.get("act", "gelu"))
    self.mm_encoder = layers.Encoder(**fields, **kw)
    self.mm_ln = layers.layer_norm("mm_ln", eps=fields.get("ln_eps", 1e-5), **kw)
    self.mm_pooler = dense(mm, ("embed", "mlp"))
    self.itm_head = dense(2, ("mlp", "classes"))
    mim_out = self.mim_codes or self.image["patch_size"] ** 2 * 3
    head = lambda tower, n, axis, used=None: PredictionHead(
      n, axis, act=tower.get("act", "gelu"), ln_eps=tower.get("ln_eps", 1e-5), used=used, **kw
    )
    words = (self.text["vocab_size"], "vocab", self.text.get("vocab_used"))
    self.text_mlm_head = head(self.text, *words)
    self.image_mim_head = head(self.image, mim_out, "mlp")
    self.mm_mlm_head = head(self.text, *words)
    self.mm_mim_head = head(self.image, mim_out, "mlp")

  # --- encoders ------------------------------------------------------------------------------------

  # Each encoder returns (pooled, LayerNormed tokens, the last block's output before that LayerNorm); the
  # multimodal encoder reads the latter, as FLAVA does.

  def _image(self, images, train, patch_mask=None):
    cls, tokens, hidden = self.image_encoder(
      images, train=train, patch_mask=patch_mask, return_hidden=True
    )
    return cls, jnp.concatenate([cls[:, None], tokens], axis=1), hidden

  def _text(self, tokens, train):
    return self.text_encoder(tokens, train=train, return_hidden=True)

  def _multimodal(self, image_hidden, text_hidden, tokens, train):
    """-> (pooled [batch, mm], image part [batch, 1 + patches, mm], text part [batch, length, mm])."""
    pad_id = self.text.get("pad_id", 0)
    text_valid = tokens != pad_id if pad_id >= 0 else jnp.ones(tokens.shape, bool)
    b = image_hidden.shape[0]
    cls = jnp.broadcast_to(self.mm_cls.astype(self.dtype), (b, 1, self.mm_cls.shape[0]))
    x = jnp.concatenate([cls, self.image_to_mm(image_hidden), self.text_to_mm(text_hidden)], axis=1)
    valid = jnp.concatenate([jnp.ones((b, 1 + image_hidden.shape[1]), bool), text_valid], axis=1)
    x = self.mm_ln(
      self.mm_encoder(x, layers.attention_mask(jnp.ones_like(valid), valid, False), not train)
    )
    n_image = image_hidden.shape[1]
    return jnp.tanh(self.mm_pooler(x[:, 0])), x[:, 1 : 1 + n_image], x[:, 1 + n_image :]

  # --- objective entry points ----------------------------------------------------------------------

  def encode_image(self, images, train: bool = False):
    return l2_normalize(self.image_proj(self._image(images, train)[0]))

  def encode_text(self, tokens, train: bool = False):
    return l2_normalize(self.text_proj(self._text(tokens, train)[0]))

  def itm_logits(self, images, tokens, train: bool = False):
    pooled, _, _ = self._multimodal(
      self._image(images, train)[2], self._text(tokens, train)[2], tokens, train
    )
    return self.itm_head(pooled).astype(jnp.float32)

  def text_mlm_logits(self, images, tokens, train: bool = False):
    del images
    return self.text_mlm_head(self._text(tokens, train)[1])

  def image_mim(self, images, tokens, patch_mask, train: bool = False):
    """Predictions for every patch [batch, patches, pixels or codes] from the image encoder with
    `patch_mask`ed patches replaced by the mask token."""
    del tokens
    _, image_tokens, _ = self._image(images, train, patch_mask)
    return self.image_mim_head(image_tokens[:, 1:])

  def mmm(self, images, tokens, patch_mask, train: bool = False):
    """Masked multimodal modeling: (MLM logits at text positions, MIM predictions at patches) of the
    multimodal encoder fed masked tokens and masked patches."""
    image_hidden = self._image(images, train, patch_mask)[2]
    _, image_part, text_part = self._multimodal(
      image_hidden, self._text(tokens, train)[2], tokens, train
    )
    return self.mm_mlm_head(text_part), self.mm_mim_head(image_part[:, 1:])

  def __call__(self, images, tokens, train: bool = False, requests=None):
    """One forward pass for every FLAVA objective.

    Always the contrastive embeddings and scale. Requests (see `vlm_jax.objectives`) add: `masked_text` ->
    text_mlm_logits at the masked positions; `patch_mask` -> image_mim; both -> mm_mlm_logits and mm_mim of
    the multimodal encoder over the masked streams (MMM reuses the unimodal MLM / MIM encodings); `itm` ->
    itm_logits of the multimodal encoder over each text and the image it is paired with, mined from the
    contrastive similarities computed here (the unimodal encodings are reused, not recomputed), and the
    pairing (itm_negative, itm_hard). Without requests (init, plain calls): every head on the unmasked
    inputs. Under jit, what no objective reads is pruned.
    """
    image_cls, image_tokens, image_hidden = self._image(images, train)
    text_pooled, text_tokens, text_hidden = self._text(tokens, train)
    image_emb, text_emb = (
      l2_normalize(self.image_proj(image_cls)),
      l2_normalize(self.text_proj(text_pooled)),
    )
    out = {
      "image_emb": image_emb,
      "text_emb": text_emb,
      "logit_scale": two_tower.logit_scale_in_forward(self),
    }
    if not requests:
      pooled, image_part, text_part = self._multimodal(image_hidden, text_hidden, tokens, train)
      return {
        **out,
        "itm_logits": self.itm_head(pooled),
        "text_mlm_logits": self.text_mlm_head(text_tokens),
        "image_mim": self.image_mim_head(image_tokens[:, 1:]),
        "mm_mlm_logits": self.mm_mlm_head(text_part),
        "mm_mim": self.mm_mim_head(image_part[:, 1:]),
      }
    masked, patch_mask, itm = (
      requests.get("masked_text"),
      requests.get("patch_mask"),
      requests.get("itm"),
    )
    at = lambda x, positions: jnp.take_along_axis(x, positions[..., None], axis=1)
    if masked is not None:
      _, masked_text, masked_text_hidden = self._text(masked.tokens, train)
      out["text_mlm_logits"] = self.text_mlm_head(at(masked_text, masked.positions))
    if patch_mask is not None:
      _, masked_image, masked_image_hidden = self._image(images, train, patch_mask.mask)
      out["image_mim"] = self.image_mim_head(masked_image[:, 1:])
    if masked is not None and patch_mask is not None:
      _, image_part, text_part = self._multimodal(
        masked_image_hidden, masked_text_hidden, masked.tokens, train
      )
      out["mm_mlm_logits"] = self.mm_mlm_head(at(text_part, masked.positions))
      out["mm_mim"] = self.mm_mim_head(image_part[:, 1:])
    if itm is not None:
      index, negative, hard = itm(text_emb @ image_emb.T if itm.needs_scores else None)
      pooled, _, _ = self._multimodal(image_hidden[index], text_hidden, tokens, train)
      out.update(
        itm_logits=self.itm_head(pooled).astype(jnp.float32), itm_negative=negative, itm_hard=hard
      )
    return out
