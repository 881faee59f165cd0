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
from vlm_jax.models import layers, vit
from vlm_jax.models.lm import ServesLM
from vlm_jax.requests import LMRequest, token_valid


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


class PrefixLM(ServesLM, nn.Module):
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
    return token_valid(tokens, self.text.get("pad_id", 0))

  def _image_tokens(self, images, train):
    _, tokens = self.image_encoder(images, train=train)
    return self.projector(tokens)

  def _embed(self, tokens, positions):
    positions = jnp.clip(positions, 0, self.text["max_len"] - 1)
    return self.lm_embed(tokens) + jnp.take(self.lm_pos_embed, positions, axis=0).astype(self.dtype)

  def _logits(self, x):
    return layers.mask_padded_vocab(self.lm_head(self.lm_ln(x)), self.text.get("vocab_used"))

  def lm_logits(self, images, request: LMRequest, train: bool = False, image_tokens=None):
    """Logits [batch, length, vocab]; position t predicts tokens[:, t + 1]. The first `prefix_len` text
    tokens (per row; >= 1) and the image form the bidirectional prefix; a parallel row's text is one block
    with the image. image_tokens: the projected image, when the caller has it already."""
    b, length = request.tokens.shape
    inputs = self.decoder_inputs(request)
    x = self._embed(inputs.tokens, jnp.broadcast_to(jnp.arange(length), (b, length)))
    valid, prefix_len = inputs.valid, request.prefix_len
    if inputs.bidirectional is not None:
      prefix_len = jnp.where(inputs.bidirectional, length, prefix_len)
    blocks = layers.prefix_blocks(length, prefix_len)
    n = 0
    if not request.text_only:
      image = self._image_tokens(images, train) if image_tokens is None else image_tokens
      n = image.shape[1]
      x = jnp.concatenate([image.astype(x.dtype), x], axis=1)
      valid = jnp.concatenate([jnp.ones((b, n), bool), valid], axis=1)
      blocks = jnp.concatenate([jnp.zeros((b, n), blocks.dtype), blocks], axis=1)
    x = self.lm_decoder(x, layers.block_mask(blocks, blocks, valid), not train)
    return self._logits(x[:, n:])

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
    """Captioning logits, plus `lm/<key>` logits for each `LMRequest` (`vlm_jax.requests`); the image is
    encoded once for all of them."""
    image = self._image_tokens(images, train)
    lm = lambda request: self.lm_logits(images, request, train, image_tokens=image)
    return {"caption_logits": lm(LMRequest.caption(tokens)), **self.lm_outputs(requests, lm)}
