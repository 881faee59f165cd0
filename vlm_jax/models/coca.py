"""CoCa as open_clip 3.3.0 builds it (`open_clip/coca_model.py`, `model_configs/coca_ViT-B-32.json`), so
that open_clip's CoCa weights import exactly (`python -m vlm_jax.convert --from openclip`) and a training
step equals open_clip's (tests/test_reference_steps.py).

- Image: a ViT whose tokens (class token included, before any final LayerNorm) are pooled by one
  `AttentionPool` of `caption_queries` queries with LayerNormed queries and keys (open_clip's
  `AttentionalPooler`, queries `embed_dim` wide), then LayerNormed (`image_ln_post`); the first query's
  output, projected, is the contrastive embedding and the others are what the decoder reads.
- Text: a causal tower over the caption plus a learned class embedding appended at the end, whose
  LayerNormed output, projected, is the text embedding; the token outputs (before the final LayerNorm),
  all but the last, feed the decoder.
- Multimodal decoder: per layer a causal self-attention block then a cross-attention block to the image
  tokens (open_clip's `MultimodalTransformer`), a final LayerNorm and an unbiased projection to the
  vocabulary.
"""

import math
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from vlm_jax.errors import ConfigError
from vlm_jax.models import layers, text, two_tower, vit
from vlm_jax.models.two_tower import l2_normalize


class CoCa(nn.Module):
  image: dict  # VisionTransformer fields (pool is forced to 'unpooled')
  text: dict  # TextTransformer fields (causal, with an appended class embedding)
  decoder: dict  # multimodal decoder: depth, num_heads, mlp_dim (width: the text tower's)
  embed_dim: int = 512
  caption_queries: int = 256  # the image pooler's queries: 1 contrastive + the decoder's tokens
  pool_heads: int = 8  # open_clip's attn_pooler_heads
  logit_scale_init: float = math.log(1 / 0.07)
  logit_scale_max: float = math.log(100.0)
  logit_scale_min: float = 0.0
  logit_scale_clamp: str = "forward"  # two_tower.LOGIT_SCALE_CLAMPS
  locked: tuple = ()
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  def setup(self):
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    if not self.text.get("causal", True):
      raise ConfigError("CoCa's text tower is a decoder; model.text.causal must be True")
    if self.text["width"] != self.embed_dim:
      raise ConfigError(
        f"CoCa's decoder reads the pooled image tokens ({self.embed_dim} wide, model.embed_dim) with "
        f"the text tower's width ({self.text['width']}); make them equal, as open_clip's configs do"
      )
    two_tower.check_locked(self.locked)
    two_tower.check_logit_scale_clamp(self.logit_scale_clamp)
    attention = self.image.get("attention", "auto")
    self.image_encoder = vit.VisionTransformer(**{**self.image, "pool": "unpooled"}, **kw)
    self.image_pool = layers.AttentionPool(
      self.caption_queries,
      self.pool_heads,
      width=self.embed_dim,
      norm_inputs=True,
      attention=attention,
      **kw,
    )
    self.image_ln_post = layers.layer_norm("image_ln_post", **kw)
    self.text_encoder = text.TextTransformer(**{**self.text, "embed_cls": True}, **kw)
    proj = lambda fan_in: layers.partitioned(
      nn.initializers.normal(fan_in**-0.5), ("embed", "proj")
    )
    self.image_proj = nn.Dense(
      self.embed_dim, use_bias=False, kernel_init=proj(self.embed_dim), **kw
    )
    self.text_proj = nn.Dense(
      self.embed_dim, use_bias=False, kernel_init=proj(self.text["width"]), **kw
    )
    self.multimodal_decoder = layers.Encoder(
      layer="multimodal",
      act=self.text.get("act", "gelu"),
      ln_eps=self.text.get("ln_eps", 1e-5),
      remat=self.text.get("remat", "none"),
      scan=self.text.get("scan", False),
      attention=self.text.get("attention", "auto"),
      **self.decoder,
      **kw,
    )
    self.decoder_ln = layers.layer_norm("decoder_ln", eps=self.text.get("ln_eps", 1e-5), **kw)
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
    """(normalised contrastive embedding, the decoder's image tokens)."""

    def features(x, train):
      _, tokens = self.image_encoder(x, train=train)
      pooled = self.image_ln_post(self.image_pool(tokens))
      return self.image_proj(pooled[:, 0]), pooled[:, 1:]

    emb, context = two_tower.run_tower(self.locked, "image", features, images, train)
    return l2_normalize(emb), context

  def _text(self, tokens, train):
    """(normalised embedding, the decoder's inputs): the class embedding reads the whole caption; the
    decoder reads the token outputs but the last (open_clip 3.3's `token_embs[:, :-1]`, aligned with the
    labels `text[:, 1:]`)."""

    def features(x, train):
      pooled, hidden = self.text_encoder(x, train=train)
      return self.text_proj(pooled), hidden[:, :-1]

    emb, hidden = two_tower.run_tower(self.locked, "text", features, tokens, train)
    return l2_normalize(emb), hidden

  def _logits(self, x):
    return layers.mask_padded_vocab(self.lm_head(self.decoder_ln(x)), self.text.get("vocab_used"))

  def _decode(self, hidden, context, train):
    """Next-token logits [batch, length, vocab]; the last position, whose token the text tower does not
    read, gets zeros (nothing predicts past the caption)."""
    mask = layers.attention_mask(
      jnp.ones(hidden.shape[:2], bool), jnp.ones(hidden.shape[:2], bool), causal=True
    )
    logits = self._logits(self.multimodal_decoder(hidden, mask, not train, context=context))
    return jnp.pad(logits, ((0, 0), (0, 1), (0, 0)))

  def encode_image(self, images, train: bool = False):
    return self._image(images, train)[0]

  def encode_text(self, tokens, train: bool = False):
    return self._text(tokens, train)[0]

  def caption_logits(self, images, tokens, train: bool = False):
    _, context = self._image(images, train)
    _, hidden = self._text(tokens, train)
    return self._decode(hidden, context, train)

  # Cached decoding (`vlm_jax.generate`): the image tokens once, then a chunk of text tokens per call. The
  # text tower is causal and its class embedding comes last, so text tokens never see it.

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
    x = self.multimodal_decoder(hidden, mask, True, context=context, decode=True)
    logits = self._logits(x)
    return layers.last_valid(logits, valid) if prefill else logits

  def __call__(self, images, tokens, train: bool = False, requests=None):
    del requests  # CoCa's objective reads the outputs below; it asks for nothing more
    image_emb, context = self._image(images, train)
    text_emb, hidden = self._text(tokens, train)
    return {
      "image_emb": image_emb,
      "text_emb": text_emb,
      "logit_scale": two_tower.logit_scale_in_forward(self),
      "caption_logits": self._decode(hidden, context, train),
    }
