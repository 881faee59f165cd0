"""CoCa: a contrastive image-text model whose text tower doubles as a captioner.

Image tokens are attention-pooled twice: one query gives the contrastive image embedding, `caption_queries`
queries give the tokens the multimodal decoder cross-attends to. The text tower is a causal (unimodal)
decoder whose end-of-text output is the text embedding; its token outputs feed the multimodal decoder
(causal self-attention + cross-attention to the image), whose head predicts the next token.

Differences from the paper, on purpose: the text embedding is read at the end-of-text token (as CLIP)
instead of an appended [CLS] token; both do the same job in a causal tower and this keeps one text
encoder for CLIP, LiT and CoCa.
"""

import math
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from vlm_jax.models import layers, text, two_tower, vit
from vlm_jax.models.two_tower import l2_normalize


class CoCa(nn.Module):
  image: dict  # VisionTransformer fields (pool is forced to 'none')
  text: dict  # TextTransformer fields (causal, eot pooling)
  decoder: dict  # multimodal decoder: depth, num_heads, mlp_dim
  embed_dim: int = 512
  caption_queries: int = 256
  logit_scale_init: float = math.log(1 / 0.07)
  logit_scale_max: float = math.log(100.0)
  locked: tuple = ()
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  def setup(self):
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    if not self.text.get("causal", True):
      raise ValueError("CoCa's text tower is a decoder; model.text.causal must be True")
    two_tower.check_locked(self.locked)
    self.image_encoder = vit.VisionTransformer(**{**self.image, "pool": "none"}, **kw)
    heads = self.image["num_heads"]
    attention = self.image.get("attention", "auto")
    self.image_pool = layers.AttentionPool(1, heads, attention=attention, **kw)
    self.image_caption_pool = layers.AttentionPool(
      self.caption_queries, heads, attention=attention, **kw
    )
    self.text_encoder = text.TextTransformer(**self.text, **kw)
    proj = lambda fan_in: layers.partitioned(
      nn.initializers.normal(fan_in**-0.5), ("embed", "proj")
    )
    self.image_proj = nn.Dense(
      self.embed_dim, use_bias=False, kernel_init=proj(self.image["width"]), **kw
    )
    self.text_proj = nn.Dense(
      self.embed_dim, use_bias=False, kernel_init=proj(self.text["width"]), **kw
    )
    # Not named image_*: it belongs to the decoder and trains when the image tower is locked.
    self.decoder_context_proj = nn.Dense(
      self.text["width"],
      **kw,
      kernel_init=layers.partitioned(nn.initializers.xavier_uniform(), ("embed", "mlp")),
      bias_init=layers.partitioned(nn.initializers.zeros, ("mlp",)),
    )
    self.multimodal_decoder = layers.Encoder(
      cross_attention=True,
      act=self.text.get("act", "gelu"),
      remat=self.text.get("remat", "none"),
      scan=self.text.get("scan", False),
      attention=self.text.get("attention", "auto"),
      **self.decoder,
      **kw,
    )
    self.decoder_ln = layers.layer_norm("decoder_ln", **kw)
    self.lm_head = nn.Dense(
      self.text["vocab_size"],
      use_bias=False,
      **kw,
      kernel_init=layers.partitioned(
        nn.initializers.normal(self.text["width"] ** -0.5), ("embed", "vocab")
      ),
    )
    self.decode_state = layers.DecodeState()
    self.logit_scale = self.param(
      "logit_scale",
      layers.partitioned(nn.initializers.constant(self.logit_scale_init), ()),
      (),
      jnp.float32,
    )

  def _image(self, images, train):
    """(normalised contrastive embedding, caption context tokens)."""

    def features(x, train):
      _, tokens = self.image_encoder(x, train=train)
      return self.image_proj(self.image_pool(tokens)[:, 0]), self.image_caption_pool(tokens)

    emb, context = two_tower.run_tower(self.locked, "image", features, images, train)
    return l2_normalize(emb), context

  def _text(self, tokens, train):
    def features(x, train):
      pooled, hidden = self.text_encoder(x, train=train)
      return self.text_proj(pooled), hidden

    emb, hidden = two_tower.run_tower(self.locked, "text", features, tokens, train)
    return l2_normalize(emb), hidden

  def _decode(self, hidden, context, tokens, train):
    """Next-token logits [batch, length, vocab] at every position."""
    pad_id = self.text.get("pad_id", 0)
    valid = tokens != pad_id if pad_id >= 0 else jnp.ones(tokens.shape, bool)
    mask = layers.attention_mask(jnp.ones_like(valid), valid, causal=True)
    x = self.multimodal_decoder(hidden, mask, not train, context=self.decoder_context_proj(context))
    return layers.mask_padded_vocab(self.lm_head(self.decoder_ln(x)), self.text.get("vocab_used"))

  def encode_image(self, images, train: bool = False):
    return self._image(images, train)[0]

  # Cached decoding (`vlm_jax.generate`): the image context once, then a chunk of tokens per call.

  def decode_context(self, images):
    return self._image(images, False)[1]

  def decode(self, context, tokens, prefill: bool = False):
    """Next-token logits [batch, n, vocab] for a chunk of tokens, appended to the `cache` collection
    (causal throughout, so a prompt chunk needs nothing special); prefill: [batch, vocab] after the prompt."""
    pad_id = self.text.get("pad_id", 0)
    valid = tokens != pad_id if pad_id >= 0 else jnp.ones(tokens.shape, bool)
    positions, mask = self.decode_state(
      valid, jnp.broadcast_to(jnp.arange(tokens.shape[1]), tokens.shape)
    )
    _, hidden = self.text_encoder(tokens, decode=True, positions=positions, mask=mask)
    x = self.multimodal_decoder(
      hidden, mask, True, context=self.decoder_context_proj(context), decode=True
    )
    logits = layers.mask_padded_vocab(self.lm_head(self.decoder_ln(x)), self.text.get("vocab_used"))
    return layers.last_valid(logits, valid) if prefill else logits

  def encode_text(self, tokens, train: bool = False):
    return self._text(tokens, train)[0]

  def caption_logits(self, images, tokens, train: bool = False):
    _, context = self._image(images, train)
    _, hidden = self._text(tokens, train)
    return self._decode(hidden, context, tokens, train)

  def __call__(self, images, tokens, train: bool = False, requests=None):
    del requests  # CoCa's objective reads the outputs below; it asks for nothing more
    image_emb, context = self._image(images, train)
    text_emb, hidden = self._text(tokens, train)
    return {
      "image_emb": image_emb,
      "text_emb": text_emb,
      "logit_scale": jnp.minimum(self.logit_scale, self.logit_scale_max),
      "caption_logits": self._decode(hidden, context, tokens, train),
    }
