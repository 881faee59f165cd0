"""Single-tower fusion model (ViLT): patch and word embeddings, tagged by modality, in one transformer.

Layout as HF `ViltModel` (so its weights can be imported): BERT-style text embeddings (word + position +
token type, LayerNorm), ViT patch embeddings (with a class token and position embeddings), a learned
modality-type embedding added to each, one pre-LN encoder over [text; image], a final LayerNorm and a
tanh pooler on the first (text [CLS]/bos) token. Heads: image-text matching (2-way) on the pooled output and
masked language modeling on the text positions.
"""

from typing import Any

import einops
import flax.linen as nn
import jax
import jax.numpy as jnp

from vlm_jax.errors import ConfigError
from vlm_jax.models import layers
from vlm_jax.models.two_tower import l2_normalize


class SingleTower(nn.Module):
  vocab_size: int
  width: int
  depth: int
  num_heads: int
  mlp_dim: int
  patch_size: int
  image_size: int
  max_len: int = 40
  pad_id: int = 0
  vocab_used: int | None = None  # the tokenizer's vocabulary (vocab_size is it padded)
  act: str = "gelu"
  ln_eps: float = 1e-12
  dropout: float = 0.0
  remat: str = "none"
  scan: bool = False
  attention: str = "auto"  # layers.attention_implementation
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  def setup(self):
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    normal = lambda axes: layers.partitioned(nn.initializers.normal(0.02), axes)
    self.text_embed = nn.Embed(
      self.vocab_size, self.width, embedding_init=normal(("vocab", "embed")), **kw
    )
    self.text_pos_embed = self.param(
      "text_pos_embed", normal(("length", "embed")), (self.max_len, self.width), self.param_dtype
    )
    self.text_ln = layers.layer_norm("text_ln", eps=self.ln_eps, **kw)
    self.patch_embed = nn.Dense(
      self.width,
      kernel_init=layers.partitioned(nn.initializers.lecun_normal(), ("patch", "embed")),
      bias_init=layers.partitioned(nn.initializers.zeros, ("embed",)),
      **kw,
    )
    layers.check_patch_grid(self.image_size, self.patch_size)
    num_patches = (self.image_size // self.patch_size) ** 2
    self.image_cls = self.param("image_cls", normal(("embed",)), (self.width,), self.param_dtype)
    self.image_pos_embed = self.param(
      "image_pos_embed",
      normal(("length", "embed")),
      (num_patches + 1, self.width),
      self.param_dtype,
    )
    self.modality_embed = self.param(
      "modality_embed", normal(("modality", "embed")), (2, self.width), self.param_dtype
    )
    self.encoder = layers.Encoder(
      self.depth,
      self.num_heads,
      self.mlp_dim,
      act=self.act,
      dropout=self.dropout,
      ln_eps=self.ln_eps,
      remat=self.remat,
      scan=self.scan,
      attention=self.attention,
      **kw,
    )
    self.final_ln = layers.layer_norm("final_ln", eps=self.ln_eps, **kw)
    dense = lambda n, axes: nn.Dense(
      n,
      kernel_init=layers.partitioned(nn.initializers.normal(0.02), axes),
      bias_init=layers.partitioned(nn.initializers.zeros, axes[1:]),
      **kw,
    )
    self.pooler = dense(self.width, ("embed", "mlp"))
    self.itm_head = dense(2, ("mlp", "classes"))
    self.mlm_transform = dense(self.width, ("embed", "mlp"))
    self.mlm_ln = layers.layer_norm("mlm_ln", eps=self.ln_eps, **kw)
    self.mlm_bias = self.param(
      "mlm_bias",
      layers.partitioned(nn.initializers.zeros, ("vocab",)),
      (self.vocab_size,),
      self.param_dtype,
    )

  def _text(self, tokens):
    if tokens.shape[1] > self.max_len:
      raise ConfigError(
        f"text length {tokens.shape[1]} (data.max_len) exceeds the model's max_len {self.max_len}; "
        "lower data.max_len or raise model.text.max_len"
      )
    x = self.text_embed(tokens) + self.text_pos_embed[: tokens.shape[1]].astype(self.dtype)[None]
    return self.text_ln(x) + self.modality_embed[0].astype(self.dtype), tokens != self.pad_id

  def _image(self, images):
    p = self.patch_size
    patches = einops.rearrange(
      images.astype(self.dtype), "b (h p) (w q) c -> b (h w) (p q c)", p=p, q=p
    )
    x = self.patch_embed(patches)
    cls = jnp.broadcast_to(self.image_cls.astype(self.dtype), (x.shape[0], 1, self.width))
    x = jnp.concatenate([cls, x], axis=1) + self.image_pos_embed.astype(self.dtype)[None]
    return x + self.modality_embed[1].astype(self.dtype), jnp.ones(x.shape[:2], bool)

  def _encode(self, parts, train):
    x = jnp.concatenate([p[0] for p in parts], axis=1)
    valid = jnp.concatenate([p[1] for p in parts], axis=1)
    mask = layers.attention_mask(jnp.ones_like(valid), valid, causal=False)
    return self.final_ln(self.encoder(x, mask, not train))

  def _pool(self, x):
    return jnp.tanh(self.pooler(x[:, 0]))

  def features(self, images, tokens, train: bool = False):
    """-> {'pooled' [batch, width], 'text_tokens' [batch, length, width], 'image_tokens'}."""
    x = self._encode([self._text(tokens), self._image(images)], train)
    return {
      "pooled": self._pool(x),
      "text_tokens": x[:, : tokens.shape[1]],
      "image_tokens": x[:, tokens.shape[1] :],
    }

  def _itm_head(self, pooled):
    return self.itm_head(pooled).astype(jnp.float32)

  def _mlm_head(self, text_tokens):
    x = self.mlm_ln(layers.ACTIVATIONS[self.act](self.mlm_transform(text_tokens)))
    logits = self.text_embed.attend(x) + self.mlm_bias.astype(self.dtype)
    return layers.mask_padded_vocab(logits, self.vocab_used)

  def __call__(self, images, tokens, train: bool = False, requests=None):
    """One forward pass for ViLT's objectives. Requests (see `vlm_jax.objectives`): `masked_text` ->
    mlm_logits at the masked positions (one pass over the masked text and its image); `itm` -> itm_logits
    over each text and the image it is paired with (one pass; hard negatives mined from `match_scores`),
    and the pairing (itm_negative, itm_hard). Without requests (init, plain calls): the features and both
    heads at every position."""
    if not requests:
      out = self.features(images, tokens, train)
      return {
        **out,
        "itm_logits": self._itm_head(out["pooled"]),
        "mlm_logits": self._mlm_head(out["text_tokens"]),
      }
    out = {}
    masked, itm = requests.get("masked_text"), requests.get("itm")
    if masked is not None:
      text = self.features(images, masked.tokens, train)["text_tokens"]
      out["mlm_logits"] = self._mlm_head(
        jnp.take_along_axis(text, masked.positions[..., None], axis=1)
      )
    if itm is not None:
      index, negative, hard = itm(self.match_scores(images, tokens) if itm.needs_scores else None)
      out.update(
        itm_logits=self._itm_head(self.features(images[index], tokens, train)["pooled"]),
        itm_negative=negative,
        itm_hard=hard,
      )
    return out

  def itm_logits(self, images, tokens, train: bool = False):
    """[batch, 2] logits of (not matching, matching)."""
    return self._itm_head(self.features(images, tokens, train)["pooled"])

  def mlm_logits(self, images, tokens, train: bool = False):
    """[batch, length, vocab]: the text positions through the MLM head (decoder tied to the word embeddings)."""
    return self._mlm_head(self.features(images, tokens, train)["text_tokens"])

  def match_scores(self, images, tokens):
    """[text, image] in-batch similarity for mining hard ITM negatives: cosine similarity of the pooled
    unimodal encodings (text alone, image alone), without gradient."""
    text = self._pool(self._encode([self._text(tokens)], False))
    image = self._pool(self._encode([self._image(images)], False))
    return jax.lax.stop_gradient(l2_normalize(text) @ l2_normalize(image).T)
