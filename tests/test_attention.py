"""Fused attention (`jax.nn.dot_product_attention`) equals the reference einsum attention: values and
gradients under every mask kind, in float32 and bfloat16, and through cached decoding of whole models."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tests.test_generate import TOKENS, tiny_coca, tiny_prefix_lm, tiny_simvlm
from vlm_jax import generate
from vlm_jax.models import layers

B, T, S, WIDTH, HEADS = 3, 6, 6, 32, 4


def _masks():
  """Every mask the models build ([batch, 1, q, k] booleans), including fully masked query rows."""
  rng = np.random.default_rng(0)
  valid = jnp.asarray(np.arange(S)[None] < np.array([[6], [4], [1]]))
  block_ids = jnp.asarray(np.sort(rng.integers(0, 3, size=(B, S)), axis=1))
  return {
    "none": None,
    "bidirectional_padding": layers.attention_mask(jnp.ones_like(valid), valid, causal=False),
    "causal": layers.attention_mask(jnp.ones_like(valid), valid, causal=True),
    "padded_queries": layers.attention_mask(valid, valid, causal=True),  # rows with no key at all
    "prefix_lm": layers.block_mask(
      layers.prefix_blocks(S, jnp.array([2, 3, 1])),
      layers.prefix_blocks(S, jnp.array([2, 3, 1])),
      valid,
    ),
    "block_causal": layers.block_mask(block_ids, block_ids, valid),
    "cross_context": valid[
      :, None, None, :
    ],  # [batch, 1, 1, context]: cross-attention's context mask
  }


def _attention_outputs(implementation, mask, dtype, cross):
  module = layers.Attention(HEADS, implementation=implementation, dtype=dtype)
  x = jax.random.normal(jax.random.PRNGKey(1), (B, T, WIDTH))
  context = jax.random.normal(jax.random.PRNGKey(2), (B, S, WIDTH)) if cross else None
  params = module.init(jax.random.PRNGKey(0), x, mask, context)["params"]
  params = jax.tree.map(lambda p: p * 2.0, params)  # peaked attention weights, so that masks matter

  def loss(params, x):
    out = module.apply({"params": params}, x, mask, context)
    return jnp.sum(jnp.sin(out.astype(jnp.float32))), out

  (_, out), grads = jax.jit(jax.value_and_grad(loss, argnums=(0, 1), has_aux=True))(params, x)
  return out, grads


@pytest.mark.parametrize("mask_name", list(_masks()))
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_fused_attention_equals_the_reference_in_values_and_gradients(mask_name, dtype):
  mask = _masks()[mask_name]
  cross = mask_name == "cross_context"
  want, want_grads = _attention_outputs("reference", mask, jnp.dtype(dtype), cross)
  got, got_grads = _attention_outputs("xla", mask, jnp.dtype(dtype), cross)
  # bfloat16: the fused path accumulates QK^T in float32 (the reference rounds logits to bf16 first).
  tol = 1e-5 if dtype == "float32" else 4e-2
  scale = float(jnp.abs(want.astype(jnp.float32)).max())
  np.testing.assert_allclose(
    np.asarray(got, np.float32), np.asarray(want, np.float32), atol=tol * scale
  )
  # One scale for all gradients: some are zero up to rounding (the key bias: softmax ignores a shift).
  grad_scale = max(float(jnp.abs(w.astype(jnp.float32)).max()) for w in jax.tree.leaves(want_grads))
  for g, w in zip(jax.tree.leaves(got_grads), jax.tree.leaves(want_grads)):
    np.testing.assert_allclose(
      np.asarray(g, np.float32), np.asarray(w, np.float32), atol=tol * grad_scale * 4
    )


def _with_attention(model, implementation):
  fields = {"text": {**model.text, "attention": implementation}}
  if hasattr(model, "attention"):
    fields["attention"] = implementation
  if isinstance(getattr(model, "image", None), dict) and "width" in model.image:
    fields["image"] = {**model.image, "attention": implementation}
  return model.clone(**fields)


@pytest.mark.parametrize(
  "make", [tiny_coca, tiny_prefix_lm, tiny_simvlm], ids=["coca", "prefix_lm", "simvlm"]
)
def test_cached_decoding_with_fused_attention_writes_the_reference_captions(make):
  """Prefill + one token at a time through the KV cache (masks over the cache's length) with the fused
  kernel gives the reference attention's captions and the same logits."""
  images = jax.random.normal(jax.random.PRNGKey(1), (5, 16, 16, 3))
  reference = _with_attention(make(), "reference")
  params = reference.init(jax.random.PRNGKey(0), images, jnp.ones((5, 10), jnp.int32))["params"]
  params = jax.tree.map(lambda x: x * 3.0, params)
  captions = {}
  for implementation in ("reference", "xla"):
    model = _with_attention(make(), implementation)
    captions[implementation] = np.asarray(
      jax.jit(generate.captioner(model, TOKENS, 10))(params, images)
    )
  np.testing.assert_array_equal(captions["xla"], captions["reference"])
  assert len({tuple(r) for r in captions["xla"]}) > 1  # the rows differ: the check has teeth


def test_auto_picks_xla_on_cpu_and_dropout_falls_back_to_the_reference():
  assert layers.attention_implementation("auto", jnp.bfloat16, 64, False) == "xla"  # CPU here
  assert layers.attention_implementation("auto", jnp.float32, 64, True) == "reference"
  assert layers.attention_implementation("xla", jnp.float32, 64, True) == "reference"
  with pytest.raises(ValueError, match="no attention dropout"):
    layers.attention_implementation("cudnn", jnp.bfloat16, 64, True)
  with pytest.raises(ValueError, match="model.attention=.flash. is not one of: auto, xla, cudnn"):
    layers.attention_implementation("flash", jnp.float32, 64, False)


def test_attention_dropout_still_drops_in_training():
  module = layers.Attention(HEADS, dropout=0.5)
  x = jax.random.normal(jax.random.PRNGKey(1), (B, T, WIDTH))
  params = module.init(jax.random.PRNGKey(0), x)["params"]
  run = lambda seed: module.apply(
    {"params": params}, x, deterministic=False, rngs={"dropout": jax.random.PRNGKey(seed)}
  )
  assert not np.allclose(run(0), run(1))
  np.testing.assert_array_equal(
    module.apply({"params": params}, x), nn.apply(lambda m: m(x), module)({"params": params})
  )
