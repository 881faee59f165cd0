"""Decoder-only prefix-LM: ViT -> projector (linear or 2-layer MLP) -> image tokens placed before the text
in one transformer decoder, attending fully over [image; prefix] and causally over the rest (LLaVA-style
when the prefix is a question, a captioner when it is just the start token).

Parameter groups, for staged and frozen-LM recipes (`train.stages`, `optim.frozen`): `image_encoder/...`,
`projector/...` and the language model `lm_*` (embeddings, decoder, final LayerNorm, head).
"""

from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from vlm_jax.errors import ConfigError
from vlm_jax.models import layers, text, vit


class Projector(nn.Module):
  """Image tokens -> the LM's width: 'linear', or 'mlp' (Linear-GELU-Linear, LLaVA-1.5)."""

  width: int
  kind: str = "mlp"
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    kw = dict(
      dtype=self.dtype,
      param_dtype=self.param_dtype,
      bias_init=layers.partitioned(nn.initializers.zeros, ("embed",)),
    )
    if self.kind == "linear":
      return nn.Dense(
        self.width,
        name="fc1",
        kernel_init=layers.partitioned(nn.initializers.lecun_normal(), ("mlp", "embed")),
        **kw,
      )(x)
    if self.kind != "mlp":
      raise ConfigError(f"model.projector={self.kind!r} is not one of: linear, mlp")
    x = nn.Dense(
      self.width,
      name="fc1",
      kernel_init=layers.partitioned(nn.initializers.lecun_normal(), ("mlp", "embed")),
      **kw,
    )(x)
    return nn.Dense(
      self.width,
      name="fc2",
      kernel_init=layers.partitioned(nn.initializers.lecun_normal(), ("mlp", "embed")),
      **kw,
    )(layers.ACTIVATIONS["gelu"](x))


class PrefixLM(nn.Module):
  image: dict  # VisionTransformer fields; its patch tokens are used (pool 'cls' keeps a CLIP tower's layout)
  text: dict  # the decoder: vocab_size, width, depth, num_heads, mlp_dim, max_len, pad_id, act, ...
  projector_kind: str = "mlp"
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  def setup(self):
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    t = self.text
    self.image_encoder = vit.VisionTransformer(**{"pool": "none", **self.image}, **kw)
    self.projector = Projector(t["width"], self.projector_kind, **kw)
    self.lm_embed = nn.Embed(
      t["vocab_size"],
      t["width"],
      **kw,
      embedding_init=layers.partitioned(nn.initializers.normal(0.02), ("vocab", "embed")),
    )
    self.lm_pos_embed = self.param(
      "lm_pos_embed",
      layers.partitioned(nn.initializers.normal(0.01), ("length", "embed")),
      (t["max_len"], t["width"]),
      self.param_dtype,
    )
    self.lm_decoder = layers.Encoder(
      t["depth"],
      t["num_heads"],
      t["mlp_dim"],
      act=t.get("act", "gelu"),
      dropout=t.get("dropout", 0.0),
      ln_eps=t.get("ln_eps", 1e-5),
      remat=t.get("remat", "none"),
      scan=t.get("scan", False),
      attention=t.get("attention", "auto"),
      **kw,
    )
    self.lm_ln = layers.layer_norm("lm_ln", eps=t.get("ln_eps", 1e-5), **kw)
    self.lm_head = nn.Dense(
      t["vocab_size"],
      use_bias=False,
      **kw,
      kernel_init=layers.partitioned(
        nn.initializers.normal(t["width"] ** -0.5), ("embed", "vocab")
      ),
    )
    self.decode_state = layers.DecodeState()

  def _valid(self, tokens):
    pad_id = self.text.get("pad_id", 0)
    return tokens != pad_id if pad_id >= 0 else jnp.ones(tokens.shape, bool)

  def _image_tokens(self, images, train):
    _, tokens = self.image_encoder(images, train=train)
    return self.projector(tokens)

  def _embed(self, tokens, positions):
    positions = jnp.clip(positions, 0, self.text["max_len"] - 1)
    return self.lm_embed(tokens) + jnp.take(self.lm_pos_embed, positions, axis=0).astype(self.dtype)

  def _logits(self, x):
    return layers.mask_padded_vocab(self.lm_head(self.lm_ln(x)), self.text.get("vocab_used"))

  def prefix_lm_logits(
    self,
    images,
    tokens,
    prefix_len,
    train: bool = False,
    text_only: bool = False,
    inputs=None,
    parallel=None,
    image_tokens=None,
  ):
    """Logits [batch, length, vocab]; position t predicts tokens[:, t + 1]. The first `prefix_len` text
    tokens (per row; >= 1) and the image form the bidirectional prefix. text_only: no image tokens.

    inputs: the input tokens, when they differ from `tokens`; parallel: [batch] bool, rows whose text
    inputs are all the mask token (`text.mask_token_id`) and attend to every text position (one block with
    the image, all positions valid: CapPa's parallel prediction);
    image_tokens: the projected image, when the caller has it already."""
    b, length = tokens.shape
    valid = self._valid(tokens)
    inputs = tokens if inputs is None else inputs
    if parallel is not None:
      inputs = jnp.where(parallel[:, None], text.mask_token_id(self.text), inputs)
    x = self._embed(inputs, jnp.broadcast_to(jnp.arange(length), tokens.shape))
    if parallel is not None:
      prefix_len = jnp.where(parallel, length, prefix_len)
      valid = valid | parallel[:, None]
    blocks = layers.prefix_blocks(length, prefix_len)
    n = 0
    if not text_only:
      image = self._image_tokens(images, train) if image_tokens is None else image_tokens
      n = image.shape[1]
      x = jnp.concatenate([image.astype(x.dtype), x], axis=1)
      valid = jnp.concatenate([jnp.ones((b, n), bool), valid], axis=1)
      blocks = jnp.concatenate([jnp.zeros((b, n), blocks.dtype), blocks], axis=1)
    x = self.lm_decoder(x, layers.block_mask(blocks, blocks, valid), not train)
    return self._logits(x[:, n:])

  def caption_logits(self, images, tokens, train: bool = False):
    """Captioning: only the start token joins the image in the prefix."""
    return self.prefix_lm_logits(images, tokens, jnp.ones(tokens.shape[:1], jnp.int32), train)

  # Cached decoding (`vlm_jax.generate`): the projected image tokens are the context; the prefill chunk
  # [image; prompt] is one prefix block, every later token its own.

  def decode_context(self, images):
    return self._image_tokens(images, False)

  def decode(self, context, tokens, prefill: bool = False):
    valid = self._valid(tokens)
    n = context.shape[1] if prefill else 0
    if prefill:
      valid = jnp.concatenate([jnp.ones((tokens.shape[0], n), bool), valid], axis=1)
      blocks = jnp.zeros(valid.shape, jnp.int32)
    else:
      blocks = jnp.broadcast_to(jnp.arange(tokens.shape[1]), tokens.shape)
    positions, mask = self.decode_state(valid, blocks)
    # Text positions count text tokens only: the image's tokens are always the first context.shape[1] valid ones.
    x = self._embed(tokens, positions[:, n:] - context.shape[1])
    if prefill:
      x = jnp.concatenate([context.astype(x.dtype), x], axis=1)
    logits = self._logits(self.lm_decoder(x, mask, True, decode=True)[:, n:])
    return layers.last_valid(logits, valid[:, n:]) if prefill else logits

  def __call__(self, images, tokens, train: bool = False, requests=None):
    """Captioning logits, plus `lm/<name>` logits for each prefix-LM request (see `objectives.prefix_lm`);
    the image is encoded once for all of them."""
    image = self._image_tokens(images, train)
    lm = lambda tokens, prefix_len, **kw: self.prefix_lm_logits(
      images, tokens, prefix_len, train, image_tokens=image, **kw
    )
    out = {"caption_logits": lm(tokens, jnp.ones(tokens.shape[:1], jnp.int32))}
    for name, r in (requests or {}).items():
      if name.startswith("lm/"):
        out[name] = lm(
          r["tokens"],
          r["prefix_len"],
          text_only=r.get("text_only", False),
          inputs=r.get("inputs"),
          parallel=r.get("parallel"),
        )
    return out
