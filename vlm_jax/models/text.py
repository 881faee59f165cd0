"""Text transformer: causal with end-of-text pooling as in CLIP, or bidirectional."""

from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from vlm_jax.errors import ConfigError
from vlm_jax.models import layers

# name: (width, depth, heads, mlp_dim)
SIZES = {
  "micro": (64, 2, 2, 256),
  "tiny": (128, 4, 4, 512),
  "S": (384, 12, 6, 1536),
  "B": (512, 12, 8, 2048),  # CLIP ViT-B text tower
  "M": (640, 12, 10, 2560),
  "L": (768, 12, 12, 3072),  # CLIP ViT-L/14 text tower
  "So400m": (1152, 27, 16, 4304),  # SigLIP So400m/14's text tower (big_vision, open_clip)
  "H": (1024, 24, 16, 4096),  # open_clip's ViT-H-14 and ViT-g-14 text towers
}


def parse_variant(variant: str) -> dict:
  if variant not in SIZES:
    raise ConfigError(f"unknown text variant {variant!r}; known: {', '.join(SIZES)}")
  width, depth, heads, mlp_dim = SIZES[variant]
  return dict(width=width, depth=depth, num_heads=heads, mlp_dim=mlp_dim)


def pad_vocab(vocab_size: int, multiple: int = 128) -> int:
  # Rounded up so that the vocab axis divides over a tensor-parallel mesh axis; the extra rows are never
  # produced by the tokenizer.
  return -(-vocab_size // multiple) * multiple


def mask_token_id(text: dict) -> int:
  """The decoder input of parallel-prediction rows (CapPa): an input embedding row after the output
  vocabulary, as big_vision's mask token (`model.text.mask_token=True` adds it)."""
  if not text.get("mask_token", False):
    raise ConfigError(
      "parallel prediction (the cappa objective) feeds the decoder a mask token; set "
      "model.text.mask_token=True (an input row after the output vocabulary, as big_vision's CapPa)"
    )
  return text["vocab_used"]


class TextTransformer(nn.Module):
  """Token ids [batch, length] (0 = padding) -> (pooled [batch, width], tokens [batch, length, width]).

  pool: 'eot' takes the end-of-text token (the first `eos_id` if given, else the last non-padding token;
  CLIP), 'argmax' the position of the largest token id (OpenAI's and open_clip's `text.argmax(-1)`: the
  end-of-text token of CLIP's BPE, whatever else the text holds), 'last' the last position (SigLIP),
  'first' the first token, 'mean' the mean over non-padding tokens, 'none' no pooling. pad_id -1: no
  padding mask, every position is attended (SigLIP; a causal model never attends past its end-of-text
  token anyway).
  """

  vocab_size: int  # the embedding table's rows: the tokenizer's vocabulary padded (pad_vocab)
  width: int
  depth: int
  num_heads: int
  mlp_dim: int
  vocab_used: int | None = None  # the tokenizer's vocabulary, for heads over it (mask_padded_vocab)
  max_len: int = 77
  causal: bool = True
  pool: str = "eot"
  pad_id: int = 0  # -1: no padding mask (ids are never negative; -1 keeps the field overridable)
  eos_id: int = -1  # -1: pool at the last non-padding token
  act: str = "gelu"
  ln_eps: float = 1e-5
  embed_ln: bool = False  # LayerNorm the summed embeddings (BERT, FLAVA)
  # open_clip's CoCa: a learned class embedding appended after the text, pooled (LayerNormed) as the text
  # embedding; the token outputs are returned before the final LayerNorm. Its padding mask is open_clip's:
  # correct_cls_mask=False shifts it one key right (open_clip's default, which its CoCa weights were
  # trained with), True masks the padding keys themselves.
  embed_cls: bool = False
  correct_cls_mask: bool = False
  dropout: float = 0.0
  remat: str = "none"
  scan: bool = False
  attention: str = "auto"  # layers.attention_implementation
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(
    self,
    tokens,
    train: bool = False,
    return_hidden: bool = False,
    decode: bool = False,
    positions=None,
    mask=None,
  ):
    """return_hidden: also return the last block's output before the final LayerNorm (FLAVA).

    decode: cached decoding (the `cache` collection) of a chunk of `tokens`, with the `positions` and
    `mask` a `layers.DecodeState` gave for it; returns (None, token outputs).
    """
    if tokens.shape[1] > self.max_len:
      raise ConfigError(
        f"text length {tokens.shape[1]} (data.max_len) exceeds the model's max_len {self.max_len}; "
        "lower data.max_len or raise model.text.max_len"
      )
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    valid = tokens != self.pad_id if self.pad_id >= 0 else jnp.ones(tokens.shape, bool)
    embed = nn.Embed(
      self.vocab_size,
      self.width,
      name="token_embed",
      **kw,
      embedding_init=layers.partitioned(nn.initializers.normal(0.02), ("vocab", "embed")),
    )
    x = embed(tokens)
    pos = self.param(
      "pos_embed",
      layers.partitioned(nn.initializers.normal(0.01), ("length", "embed")),
      (self.max_len + self.embed_cls, self.width),
      self.param_dtype,
    )
    if self.embed_cls and not decode:
      cls = self.param(
        "cls_embed",
        layers.partitioned(nn.initializers.normal(0.01), ("embed",)),
        (self.width,),
        self.param_dtype,
      )
      x = jnp.concatenate(
        [x, jnp.broadcast_to(cls.astype(x.dtype), (x.shape[0], 1, self.width))], 1
      )
      one = jnp.ones(valid.shape[:1] + (1,), bool)
      key_valid = jnp.concatenate([valid, one] if self.correct_cls_mask else [one, valid], axis=1)
      mask = layers.attention_mask(jnp.ones_like(key_valid), key_valid, self.causal)
      tokens_len = tokens.shape[1] + 1
    else:
      tokens_len = tokens.shape[1]
    if decode:
      if not self.causal or positions is None or mask is None:
        raise ValueError(
          "decoding needs a causal text model and the positions and mask of a DecodeState"
        )
      x = x + jnp.take(pos, positions, axis=0).astype(self.dtype)
    else:
      x = x + pos[:tokens_len].astype(self.dtype)[None]
    if self.embed_ln:
      x = layers.layer_norm("ln_embed", eps=self.ln_eps, **kw)(x)
    x = nn.Dropout(self.dropout)(x, deterministic=not train)
    if mask is None:
      mask = layers.attention_mask(jnp.ones_like(valid), valid, self.causal)
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
    )(x, mask, not train, decode=decode)
    hidden = x
    ln_final = layers.layer_norm("ln_final", eps=self.ln_eps, **kw)
    if self.embed_cls:  # the token outputs stay un-normalised; the class output is the embedding
      return (None, x) if decode else (ln_final(x[:, -1]), x[:, :-1])
    x = ln_final(x)
    if decode:
      return None, x
    if self.pool == "eot":
      if self.eos_id >= 0:
        last = jnp.argmax(tokens == self.eos_id, axis=1)
      else:
        last = jnp.maximum(valid.sum(axis=1) - 1, 0)
      pooled = jnp.take_along_axis(x, last[:, None, None], axis=1)[:, 0]
    elif self.pool == "argmax":
      pooled = jnp.take_along_axis(x, jnp.argmax(tokens, axis=1)[:, None, None], axis=1)[:, 0]
    elif self.pool == "last":
      pooled = x[:, -1]
    elif self.pool == "first":
      pooled = x[:, 0]
    elif self.pool == "mean":
      pooled = (x * valid[..., None]).sum(1) / jnp.maximum(valid.sum(1, keepdims=True), 1)
    elif self.pool == "none":
      pooled = None
    else:
      raise ConfigError(
        f"model.text.pool={self.pool!r} is not one of: eot, argmax, last, first, mean, none"
      )
    return (pooled, x, hidden) if return_hidden else (pooled, x)
