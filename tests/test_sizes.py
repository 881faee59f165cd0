"""The field's model sizes: vlm_jax's CLIP B/16 and L/14, SigLIP So400m/14 and ViT-g/14 towers have the
parameter counts and forward FLOPs open_clip publishes for the same models, and their FLOPs (2*m*n*k of every
matmul, counted from the traced program as MFU's numerator is) agree with the analytic transformer formula.
Shapes only: nothing is allocated."""

import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import pytest

from tests import helpers
from vlm_jax import config_utils, models
from vlm_jax.assembly import flops as flops_lib

# open_clip's docs/model_profile.csv (mlfoundations/open_clip at 3b37473): image and text parameters (M) and
# forward GFLOPs for one 224 px image / one context of text.
PROFILE = {
  "ViT-B-16": (86.19, 63.43, 35.13, 5.96),
  "ViT-L-14": (303.97, 123.65, 162.03, 13.30),
  "ViT-SO400M-14-SigLIP": (427.68, 449.68, 220.35, 13.19),
  "ViT-g-14": (1012.65, 354.03, 534.06, 47.09),
}
# The same models as vlm_jax recipes (the L/14 and So400m/14 ones as shipped, scanned and rematerialised:
# the count goes through the scan), with the overrides that make the others.
CONFIGS = {
  "ViT-B-16": ("clip_b32.py", {"image.variant": "B/16"}),
  "ViT-L-14": ("clip_l14.py:paper", {}),
  "ViT-SO400M-14-SigLIP": ("siglip_so400m.py:paper", {}),
  "ViT-g-14": ("clip_b32.py", {"image.variant": "g/14", "text.variant": "H", "embed_dim": 1024}),
}
VOCAB = {"clip": 49408, "siglip": 32000}  # CLIP's BPE, SigLIP's SentencePiece


def _abstract_model(name):
  recipe, overrides = CONFIGS[name]
  config = config_utils.load_config(os.path.join(helpers.ROOT, "experiments", recipe))
  with config.unlocked():
    config.model.dtype = "float32"
    for key, value in overrides.items():
      node, leaf = config.model, key.split(".")
      for part in leaf[:-1]:
        node = node[part]
      node[leaf[-1]] = value
  model = models.build(config.model, VOCAB[config.model.name], "cpu")
  images = jax.ShapeDtypeStruct((1, 224, 224, 3), jnp.float32)
  tokens = jax.ShapeDtypeStruct((1, config.model.text.max_len), jnp.int32)
  init = lambda x, y: model.init({"params": jax.random.key(0), "dropout": jax.random.key(0)}, x, y)
  params = nn.unbox(jax.eval_shape(init, images, tokens)["params"])
  return model, params, images, tokens


def _count(params, prefix):
  return sum(x.size for k, v in params.items() if k.startswith(prefix) for x in jax.tree.leaves(v))


def _forward_flops(model, params, x, method):
  fn = lambda p, x: model.apply({"params": p}, x, method=method)
  return flops_lib.matmul_flops(jax.make_jaxpr(fn)(params, x).jaxpr)


def _transformer_flops(tokens, width, depth, mlp_dim):
  """Forward FLOPs of `depth` pre-LN blocks over `tokens` tokens: QKV and output projections (4 d^2),
  the MLP (2 d m) per token, and attention's QK^T and AV (2 n^2 d each)."""
  per_token = 2 * (4 * width**2 + 2 * width * mlp_dim)
  return depth * (tokens * per_token + 4 * tokens**2 * width)


@pytest.mark.parametrize("name", list(PROFILE))
def test_towers_have_the_published_parameters_and_flops(name):
  image_m, text_m, image_gflops, text_gflops = PROFILE[name]
  model, params, images, tokens = _abstract_model(name)
  # Towers with their projections (SigLIP's image embedding is its MAP head, inside the encoder).
  assert _count(params, "image") / 1e6 == pytest.approx(image_m, abs=0.006)
  assert _count(params, "text") / 1e6 == pytest.approx(text_m, abs=0.006)
  image_flops = _forward_flops(model, params, images, "encode_image")
  text_flops = _forward_flops(model, params, tokens, "encode_text")
  assert image_flops / 1e9 == pytest.approx(image_gflops, abs=0.006)
  assert text_flops / 1e9 == pytest.approx(text_gflops, abs=0.006)
  # The analytic count of the blocks alone (no patch embedding, pooling head or projection): within 3%.
  image, text = model.image, model.text
  patches = (224 // image["patch_size"]) ** 2 + (image["pool"] == "cls")
  blocks = lambda n, tower: _transformer_flops(
    n, *(tower[k] for k in ("width", "depth", "mlp_dim"))
  )
  assert image_flops == pytest.approx(blocks(patches, image), rel=0.03)
  assert text_flops == pytest.approx(blocks(tokens.shape[1], text), rel=0.03)
  if name in ("ViT-L-14", "ViT-SO400M-14-SigLIP"):  # the recipes as shipped
    assert image.get("scan") and image.get("remat") == "full"
