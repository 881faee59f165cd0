"""Transformer building blocks shared by every model. Every parameter carries logical axis names.

Logical axes: batch, length, embed, mlp, heads, kv, vocab, layers. `vlm_jax.core.sharding` maps them
to the `data`/`fsdp`/`tensor` mesh.
"""

from collections.abc import Callable
import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from vlm_jax.errors import ConfigError

Dtype = Any
constrain = nn.with_logical_constraint

REMAT_POLICIES = {
  "none": None,
  "full": jax.checkpoint_policies.nothing_saveable,
  "dots": jax.checkpoint_policies.checkpoint_dots,
  "dots_no_batch": jax.checkpoint_policies.checkpoint_dots_with_no_batch_dims,
}


def dtype_of(name) -> Dtype:
  return jnp.dtype(name) if isinstance(name, str) else name


def compute_dtype(name, platform: str | None = None) -> Dtype:
  """`model.dtype`: a dtype name, or "auto" = bfloat16 where matmul units are 16-bit (GPU, TPU: there it
  is 2-8x the float32 rate and half the activation memory), float32 on CPU (where bfloat16 is slower)."""
  if name != "auto":
    return dtype_of(name)
  platform = platform or jax.default_backend()
  return jnp.float32 if platform == "cpu" else jnp.bfloat16


NO_TOKEN = (
  -1e9
)  # the logit of a column that is no token; finite so that differences of such scores stay finite


def mask_padded_vocab(logits, vocab_used: int | None):
  """Float32 logits over the vocabulary with the columns from `vocab_used` on (the embedding table is
  padded to a multiple of 128 for sharding; the tokenizer never produces those ids) set to NO_TOKEN, so
  that no softmax gives them mass: losses, likelihoods and generation see the tokenizer's vocabulary
  only. None: every column is a token."""
  logits = logits.astype(jnp.float32)
  if vocab_used is None or vocab_used >= logits.shape[-1]:
    return logits
  return jnp.where(jnp.arange(logits.shape[-1]) < vocab_used, logits, NO_TOKEN)


def partitioned(init: Callable, axes) -> Callable:
  return nn.with_logical_partitioning(init, axes)


def layer_norm(
  name: str, dtype, param_dtype, eps: float = 1e-5, use_bias: bool = True
) -> nn.LayerNorm:
  return nn.LayerNorm(
    epsilon=eps,
    use_bias=use_bias,
    dtype=dtype,
    param_dtype=param_dtype,
    name=name,
    scale_init=partitioned(nn.initializers.ones, ("embed",)),
    bias_init=partitioned(nn.initializers.zeros, ("embed",)),
  )


def quick_gelu(x):
  return x * jax.nn.sigmoid(1.702 * x)


ACTIVATIONS = {
  "gelu": functools.partial(jax.nn.gelu, approximate=False),
  "gelu_tanh": jax.nn.gelu,
  "quick_gelu": quick_gelu,
  "relu": jax.nn.relu,
}


class MLP(nn.Module):
  hidden: int
  act: str = "gelu"
  dropout: float = 0.0
  use_bias: bool = True
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x, deterministic: bool = True):
    width = x.shape[-1]
    init = nn.initializers.xavier_uniform()
    x = nn.Dense(
      self.hidden,
      dtype=self.dtype,
      param_dtype=self.param_dtype,
      name="fc1",
      use_bias=self.use_bias,
      kernel_init=partitioned(init, ("embed", "mlp")),
      bias_init=partitioned(nn.initializers.zeros, ("mlp",)),
    )(x)
    x = constrain(ACTIVATIONS[self.act](x), ("batch", "length", "mlp"))
    x = nn.Dropout(self.dropout)(x, deterministic=deterministic)
    return nn.Dense(
      width,
      dtype=self.dtype,
      param_dtype=self.param_dtype,
      name="fc2",
      use_bias=self.use_bias,
      kernel_init=partitioned(init, ("mlp", "embed")),
      bias_init=partitioned(nn.initializers.zeros, ("embed",)),
    )(x)


def attention_mask(query_valid, key_valid, causal: bool):
  """[batch, 1, q, k] boolean mask from per-position validity and causality (a `block_mask`)."""
  q, k = query_valid.shape[-1], key_valid.shape[-1]
  blocks = (lambda n: jnp.arange(n)) if causal else (lambda n: jnp.zeros(n, jnp.int32))
  mask = block_mask(
    jnp.broadcast_to(blocks(q), query_valid.shape),
    jnp.broadcast_to(blocks(k), key_valid.shape),
    key_valid,
  )
  return mask & query_valid[:, None, :, None]


def block_mask(query_blocks, key_blocks, key_valid):
  """[batch, 1, q, k] mask: query i attends key j iff j is valid and block[j] <= block[i].

  The one builder behind every self-attention mask: causal (blocks = positions), prefix-LM (block 0 for
  [image; prefix], then positions: full attention over the prefix, causal over the suffix; see
  `prefix_blocks`), block-causal (any non-decreasing block ids), bidirectional (all blocks 0).
  """
  return key_valid[:, None, None, :] & (
    key_blocks[:, None, None, :] <= query_blocks[:, None, :, None]
  )


def prefix_blocks(length: int, prefix_len):
  """Block ids [batch, length] of a prefix-LM: 0 on the first `prefix_len` (per row) positions, then 1, 2, ..."""
  return jnp.maximum(jnp.arange(length)[None, :] - jnp.asarray(prefix_len)[..., None] + 1, 0)


def last_valid(x, valid):
  """x [batch, n, ...] -> [batch, ...] at each row's last valid position (a prefilled prompt's logits)."""
  last = jnp.maximum(valid.sum(axis=1) - 1, 0)
  return jnp.take_along_axis(x, last.reshape((-1,) + (1,) * (x.ndim - 1)), axis=1)[:, 0]


class DecodeState(nn.Module):
  """Bookkeeping of cached decoding (the `cache` collection): which cache slots hold valid keys, their
  block ids and how many valid tokens each row has, so that a chunk of new tokens gets its positions
  and mask rows.

  Called with a chunk's validity and block ids *relative to the chunk* ([batch, n]); a chunk's blocks are
  offset by the slot it starts at, so one token at a time gets causal blocks and a prefill chunk keeps
  its own (e.g. all 0 for a prefix). Positions count valid tokens only, so padding inside a prompt takes
  no position. The first call, with a full-length input, only sizes the cache.
  Returns (positions [batch, n], mask [batch, 1, n, cache length]).
  """

  @nn.compact
  def __call__(self, valid, blocks):
    initialized = self.has_variable("cache", "valid")
    cached_valid = self.variable("cache", "valid", jnp.zeros, valid.shape, bool)
    cached_blocks = self.variable("cache", "blocks", jnp.zeros, blocks.shape, jnp.int32)
    count = self.variable("cache", "count", jnp.zeros, valid.shape[:1], jnp.int32)
    index = self.variable("cache", "index", lambda: jnp.zeros((), jnp.int32))
    positions = jnp.cumsum(valid, axis=1) - 1
    if not initialized:
      return jnp.maximum(positions, 0), block_mask(blocks, blocks, valid)
    start = index.value
    blocks = blocks.astype(jnp.int32) + start
    cached_valid.value = jax.lax.dynamic_update_slice(cached_valid.value, valid, (0, start))
    cached_blocks.value = jax.lax.dynamic_update_slice(cached_blocks.value, blocks, (0, start))
    positions = jnp.maximum(positions + count.value[:, None], 0)
    count.value = count.value + valid.sum(axis=1).astype(jnp.int32)
    index.value = start + valid.shape[1]
    return positions, block_mask(blocks, cached_blocks.value, cached_valid.value)


ATTENTION_IMPLEMENTATIONS = ("auto", "xla", "cudnn", "reference")


def check_patch_grid(image_size: int, patch_size: int):
  """An image tower's patches must tile its images (every model that patchifies checks this at setup)."""
  if image_size % patch_size:
    raise ConfigError(
      f"model.image.image_size={image_size} is not a multiple of its patch size {patch_size} "
      "(model.image.patch_size or the variant's /P); change one of them"
    )


def attention_implementation(name: str, dtype, head_dim: int, dropout_active: bool) -> str:
  """The attention kernel to use: `model.attention` (auto | xla | cudnn | reference), resolved.

  auto: cuDNN's fused (flash) attention on GPUs for 16-bit inputs and head sizes it takes, XLA's
  `dot_product_attention` elsewhere (TPU and CPU). Attention dropout has no fused kernel: with dropout
  active in training every choice but an explicit cudnn falls back to the reference einsum path.
  """
  if name not in ATTENTION_IMPLEMENTATIONS:
    raise ConfigError(
      f"model.attention={name!r} is not one of: {', '.join(ATTENTION_IMPLEMENTATIONS)}"
    )
  if dropout_active:
    if name == "cudnn":
      raise ConfigError("model.attention='cudnn' has no attention dropout; set model.dropout=0")
    return "reference"
  if name == "auto":
    fits_cudnn = jnp.dtype(dtype) in (jnp.bfloat16, jnp.float16) and head_dim % 8 == 0
    return "cudnn" if jax.default_backend() == "gpu" and fits_cudnn and head_dim <= 128 else "xla"
  return name


def reference_attention(q, k, v, mask, dtype, dropout=None):
  """einsum -> float32 softmax -> einsum: the definition the fused kernels are tested against, and
  the path that carries attention dropout."""
  logits = jnp.einsum("bqhd,bkhd->bhqk", q, k) / jnp.sqrt(q.shape[-1]).astype(dtype)
  # Softmax in float32 whatever the compute dtype: bf16 logits lose too much.
  logits = logits.astype(jnp.float32)
  if mask is not None:
    logits = jnp.where(mask, logits, jnp.finfo(jnp.float32).min)
  weights = jax.nn.softmax(logits, axis=-1).astype(dtype)
  if dropout is not None:
    weights = dropout(weights)
  return jnp.einsum("bhqk,bkhd->bqhd", weights, v)


class Attention(nn.Module):
  """Multi-head attention; `inputs_kv` given makes it cross-attention.

  `mask` is boolean, broadcastable to [batch, heads, q, k] (`block_mask`). `implementation`: see
  `attention_implementation`; the fused paths take the same mask and give the reference's values (a
  fully masked query row averages every value in all of them).
  decode=True (self-attention): keys and values are appended to a cache (the `cache` collection) and the
  queries attend over all of it; `mask` then has the cache's length on its last axis (`DecodeState`).
  The first decode call, with a full-length input, creates the cache and attends normally.
  """

  num_heads: int
  dropout: float = 0.0
  implementation: str = "auto"
  use_bias: bool = True
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(
    self, x, mask=None, inputs_kv=None, deterministic: bool = True, decode: bool = False
  ):
    width = x.shape[-1]
    if width % self.num_heads:
      raise ConfigError(
        f"a tower's width {width} is not divisible by its num_heads {self.num_heads}; set "
        "model.<tower>.num_heads to a divisor of its width"
      )
    head_dim = width // self.num_heads
    inputs_kv = x if inputs_kv is None else inputs_kv
    kw = dict(use_bias=self.use_bias, dtype=self.dtype, param_dtype=self.param_dtype)
    q = HeadProjection(self.num_heads, head_dim, name="query", **kw)(x)
    k = HeadProjection(self.num_heads, head_dim, name="key", **kw)(inputs_kv)
    v = HeadProjection(self.num_heads, head_dim, name="value", **kw)(inputs_kv)
    q = constrain(q, ("batch", "length", "heads", "kv"))
    if decode and inputs_kv is x:
      initialized = self.has_variable("cache", "cached_key")
      cached_k = self.variable("cache", "cached_key", jnp.zeros, k.shape, k.dtype)
      cached_v = self.variable("cache", "cached_value", jnp.zeros, v.shape, v.dtype)
      index = self.variable("cache", "index", lambda: jnp.zeros((), jnp.int32))
      if initialized:
        start = index.value
        cached_k.value = jax.lax.dynamic_update_slice(cached_k.value, k, (0, start, 0, 0))
        cached_v.value = jax.lax.dynamic_update_slice(cached_v.value, v, (0, start, 0, 0))
        index.value = start + k.shape[1]
        k, v = cached_k.value, cached_v.value
    dropout_active = self.dropout > 0 and not deterministic
    impl = attention_implementation(self.implementation, self.dtype, head_dim, dropout_active)
    if impl == "reference":
      drop = nn.Dropout(self.dropout) if dropout_active else None
      out = reference_attention(
        q, k, v, mask, self.dtype, (lambda w: drop(w, deterministic=False)) if drop else None
      )
    else:
      if mask is not None:
        mask = jnp.broadcast_to(mask, mask.shape[:2] + (q.shape[1], k.shape[1]))
      out = jax.nn.dot_product_attention(q, k, v, mask=mask, implementation=impl)
    out = constrain(out, ("batch", "length", "heads", "kv"))
    return HeadMerge(width, name="out", **kw)(out)


# Kernels are created in their final 3-D shape (flax's DenseGeneral creates them flat, which breaks
# logical-axis constraints), with Xavier fan-in/out computed over the right axes.
class HeadProjection(nn.Module):
  """[..., embed] -> [..., heads, kv]."""

  num_heads: int
  head_dim: int
  use_bias: bool = True
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    init = nn.initializers.variance_scaling(1.0, "fan_avg", "uniform", in_axis=0, out_axis=(1, 2))
    kernel = self.param(
      "kernel",
      partitioned(init, ("embed", "heads", "kv")),
      (x.shape[-1], self.num_heads, self.head_dim),
      self.param_dtype,
    )
    y = jnp.einsum("...e,ehd->...hd", x.astype(self.dtype), kernel.astype(self.dtype))
    if not self.use_bias:
      return y
    bias = self.param(
      "bias",
      partitioned(nn.initializers.zeros, ("heads", "kv")),
      (self.num_heads, self.head_dim),
      self.param_dtype,
    )
    return y + bias.astype(self.dtype)


class HeadMerge(nn.Module):
  """[..., heads, kv] -> [..., features]."""

  features: int
  use_bias: bool = True
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    init = nn.initializers.variance_scaling(1.0, "fan_avg", "uniform", in_axis=(0, 1), out_axis=2)
    kernel = self.param(
      "kernel",
      partitioned(init, ("heads", "kv", "embed")),
      (x.shape[-2], x.shape[-1], self.features),
      self.param_dtype,
    )
    y = jnp.einsum("...hd,hde->...e", x.astype(self.dtype), kernel.astype(self.dtype))
    if not self.use_bias:
      return y
    bias = self.param(
      "bias", partitioned(nn.initializers.zeros, ("embed",)), (self.features,), self.param_dtype
    )
    return y + bias.astype(self.dtype)


class Block(nn.Module):
  """Pre-LayerNorm transformer block, with cross-attention to a `context` when `cross_attention` is set
  (decoders: CoCa's multimodal decoder, SimVLM). Returns (x, None) so that it can be scanned."""

  num_heads: int
  mlp_dim: int
  act: str = "gelu"
  dropout: float = 0.0
  ln_eps: float = 1e-5
  cross_attention: bool = False
  attention: str = "auto"
  use_bias: bool = (
    True  # False: no bias in attention, MLP or LayerNorms (big_vision's CapPa decoder)
  )
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x, mask, context, deterministic, decode=False, context_mask=None):
    kw = dict(use_bias=self.use_bias, dtype=self.dtype, param_dtype=self.param_dtype)
    drop = lambda y: nn.Dropout(self.dropout)(y, deterministic=deterministic)
    norm = lambda name, y: layer_norm(name, eps=self.ln_eps, **kw)(y)
    x = constrain(x, ("batch", "length", "embed"))
    x = x + drop(
      Attention(self.num_heads, self.dropout, self.attention, name="attn", **kw)(
        norm("ln_1", x), mask, deterministic=deterministic, decode=decode
      )
    )
    if self.cross_attention:
      x = x + drop(
        Attention(self.num_heads, self.dropout, self.attention, name="cross_attn", **kw)(
          norm("ln_cross", x), context_mask, inputs_kv=context, deterministic=deterministic
        )
      )
    x = x + drop(
      MLP(self.mlp_dim, act=self.act, dropout=self.dropout, name="mlp", **kw)(
        norm("ln_2", x), deterministic=deterministic
      )
    )
    return constrain(x, ("batch", "length", "embed")), None


class AttentionPool(nn.Module):
  """Learned queries cross-attending to tokens: SigLIP's MAP head (with `mlp_dim`) and CoCa's pooler.

  tokens [batch, n, d] -> [batch, num_queries, width] (width 0: d). norm_inputs: LayerNorm the queries and
  the tokens first (open_clip's `AttentionalPooler`, whose queries may be narrower than the tokens).
  """

  num_queries: int
  num_heads: int
  mlp_dim: int = 0  # 0: attention only; else a pre-LN residual MLP after it
  width: int = 0
  norm_inputs: bool = False
  act: str = "gelu"
  ln_eps: float = 1e-5
  attention: str = "auto"
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, tokens):
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    width = self.width or tokens.shape[-1]
    probe = self.param(
      "probe",
      partitioned(nn.initializers.xavier_uniform(), ("length", "embed")),
      (self.num_queries, width),
      self.param_dtype,
    )
    if self.norm_inputs:
      probe = layer_norm("ln_q", eps=self.ln_eps, **kw)(probe)
      tokens = layer_norm("ln_k", eps=self.ln_eps, **kw)(tokens)
    queries = jnp.broadcast_to(probe.astype(self.dtype)[None], (tokens.shape[0],) + probe.shape)
    x = Attention(self.num_heads, implementation=self.attention, name="attn", **kw)(
      queries, inputs_kv=tokens
    )
    if self.mlp_dim:
      y = layer_norm("ln", eps=self.ln_eps, **kw)(x)
      x = x + MLP(self.mlp_dim, act=self.act, name="mlp", **kw)(y)
    return x


class CrossBlock(nn.Module):
  """open_clip's cross-attention block: LayerNormed queries attend to LayerNormed context (`ln_1_kv`), then
  an MLP, each residual."""

  num_heads: int
  mlp_dim: int
  act: str = "gelu"
  dropout: float = 0.0
  ln_eps: float = 1e-5
  attention: str = "auto"
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x, context, deterministic, context_mask=None):
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    norm = lambda name, y: layer_norm(name, eps=self.ln_eps, **kw)(y)
    drop = lambda y: nn.Dropout(self.dropout)(y, deterministic=deterministic)
    x = x + drop(
      Attention(self.num_heads, self.dropout, self.attention, name="attn", **kw)(
        norm("ln_1", x),
        context_mask,
        inputs_kv=norm("ln_1_kv", context),
        deterministic=deterministic,
      )
    )
    mlp = MLP(self.mlp_dim, act=self.act, dropout=self.dropout, name="mlp", **kw)
    return x + drop(mlp(norm("ln_2", x), deterministic=deterministic))


class MultimodalLayer(nn.Module):
  """One layer of open_clip's `MultimodalTransformer` (CoCa's multimodal decoder): a self-attention block
  (causal, with its MLP), then a `CrossBlock` to the image tokens. Block's call signature, so that
  `Encoder(layer="multimodal")` remats and scans it."""

  num_heads: int
  mlp_dim: int
  act: str = "gelu"
  dropout: float = 0.0
  ln_eps: float = 1e-5
  cross_attention: bool = True
  attention: str = "auto"
  use_bias: bool = True
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x, mask, context, deterministic, decode=False, context_mask=None):
    fields = dict(
      num_heads=self.num_heads,
      mlp_dim=self.mlp_dim,
      act=self.act,
      dropout=self.dropout,
      ln_eps=self.ln_eps,
      attention=self.attention,
      dtype=self.dtype,
      param_dtype=self.param_dtype,
    )
    x, _ = Block(use_bias=self.use_bias, name="self", **fields)(
      x, mask, None, deterministic, decode
    )
    return CrossBlock(name="cross", **fields)(x, context, deterministic, context_mask), None


LAYERS = {"block": Block, "multimodal": MultimodalLayer}


class Encoder(nn.Module):
  """A stack of `depth` blocks, optionally rematerialised and/or scanned over layers.

  Scanning compiles one block instead of `depth` (fast compiles for deep models); its parameters get a
  leading `layers` axis.
  """

  depth: int
  num_heads: int
  mlp_dim: int
  act: str = "gelu"
  dropout: float = 0.0
  ln_eps: float = 1e-5
  cross_attention: bool = False
  remat: str = "none"
  scan: bool = False
  attention: str = "auto"
  use_bias: bool = True
  layer: str = "block"  # LAYERS: block | multimodal (open_clip's CoCa decoder layer)
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(
    self,
    x,
    mask: jax.Array | None = None,
    deterministic: bool = True,
    context=None,
    decode: bool = False,
    context_mask=None,
  ):
    """context_mask: [batch, 1, q or 1, context] for cross-attention (None: every context token)."""
    if self.remat not in REMAT_POLICIES:
      raise ConfigError(f"model.remat={self.remat!r} is not one of: {', '.join(REMAT_POLICIES)}")
    block = LAYERS[self.layer]
    if self.remat != "none":
      block = nn.remat(
        block, policy=REMAT_POLICIES[self.remat], prevent_cse=not self.scan, static_argnums=(4, 5)
      )
    kw = dict(
      num_heads=self.num_heads,
      mlp_dim=self.mlp_dim,
      act=self.act,
      dropout=self.dropout,
      ln_eps=self.ln_eps,
      cross_attention=self.cross_attention,
      attention=self.attention,
      use_bias=self.use_bias,
      dtype=self.dtype,
      param_dtype=self.param_dtype,
    )
    if self.scan:
      stack = nn.scan(
        block,
        variable_axes={"params": 0, "cache": 0},
        split_rngs={"params": True, "dropout": True},
        in_axes=(nn.broadcast,) * 5,
        length=self.depth,
        metadata_params={nn.PARTITION_NAME: "layers"},
      )
      x, _ = stack(name="blocks", **kw)(x, mask, context, deterministic, decode, context_mask)
    else:
      for i in range(self.depth):
        x, _ = block(name=f"block_{i}", **kw)(x, mask, context, deterministic, decode, context_mask)
    return x
