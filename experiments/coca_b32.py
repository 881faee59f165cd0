"""CoCa ViT-B/32: contrastive + captioning with one image encoder and a two-part text decoder.

As open_clip's coca_ViT-B-32: a B/32 image tower attention-pooled by 1 query (contrastive) and 256 queries
(captioning), a 6-layer causal unimodal text decoder whose end-of-text output is the text embedding, and
a 6-layer multimodal decoder with cross-attention to the image. Loss = 1 x CLIP + 2 x caption
cross-entropy (padding ignored). Evaluated by zero-shot, retrieval and greedy captions that must name the
image's shape and colour.

COMMAND:
  python -m vlm_jax.main --config experiments/coca_b32.py:tiny --workdir runs/coca_tiny
"""

import os

import ml_collections

from vlm_jax import config_utils


def get_config(arg=None):
  variant = arg or "base"
  if variant not in ("base", "tiny"):
    raise ValueError(f"unknown coca_b32 variant {variant!r}; known: base, tiny")
  c = config_utils.load_config(os.path.join(os.path.dirname(__file__), f"clip_b32.py:{variant}"))
  with c.unlocked():
    c.model.name = "coca"
    c.model.caption_queries = 256
    c.model.text.update(depth=6)
    c.model.decoder = ml_collections.ConfigDict(dict(depth=6, num_heads=8, mlp_dim=2048))
    c.objectives = {
      "coca": dict(weight=1.0, contrastive_weight=1.0, caption_weight=2.0, impl="global")
    }
    c.evals.captioning = dict(
      every=c.evals.zero_shot.every, label_keys=("shape", "color"), limit=256
    )
    if variant == "tiny":
      c.model.caption_queries = 16
      c.model.text.update(depth=2)
      c.model.decoder.update(depth=2, num_heads=4, mlp_dim=512)
  return c.lock()
