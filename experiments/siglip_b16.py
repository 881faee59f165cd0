"""SigLIP ViT-B/16: sigmoid loss with learnable temperature and bias (init t' = log 10, b = -10).

Architecture as the released SigLIP B/16 (and HF `SiglipModel`): patchify with bias, no class token, no
pre-LN, MAP-head pooling whose output is the image embedding, GELU (tanh), LayerNorm eps 1e-6; a
bidirectional 768-wide text tower read at its last position, with a biased linear head. Optimiser as in
big_vision's SigLIP: lr 1e-3, weight decay 1e-4, b2 0.95. The published batch is 32768 (`:paper`).

The loss implementation is a config choice with identical results: `objectives.sigmoid.impl=global`
(logits over the global batch) or `ring` (ppermute the texts around the data shards; `bidirectional=True`
sends both ways).

COMMAND:
  python -m vlm_jax.main --config experiments/siglip_b16.py:tiny --workdir runs/siglip_tiny
  python -m vlm_jax.main --config experiments/siglip_b16.py --workdir runs/siglip_b16 \\
      --config.objectives.sigmoid.impl=ring --config.mesh=data:8
"""

import math
import os

from vlm_jax import config_utils


def get_config(arg=None):
  variant = arg or "base"
  if variant not in ("base", "paper", "tiny"):
    raise ValueError(f"unknown siglip_b16 variant {variant!r}; known: base, paper, tiny")
  c = config_utils.load_config(os.path.join(os.path.dirname(__file__), f"clip_b32.py:{variant}"))
  with c.unlocked():
    c.model.update(
      name="siglip",
      embed_dim=768,
      logit_scale_init=math.log(10.0),
      logit_scale_max=math.log(1e4),
      logit_bias_init=-10.0,
      image_head="none",
      text_head_bias=True,
    )
    c.model.image.update(
      variant="B/16", act="gelu_tanh", pool="map", ln_pre=False, patch_bias=True, ln_eps=1e-6
    )
    # 768-wide, 12 layers: the SigLIP B text tower ("L" in vlm_jax.models.text.SIZES).
    c.model.text.update(
      variant="L", max_len=64, act="gelu_tanh", causal=False, pool="last", pad_id=-1, ln_eps=1e-6
    )
    c.objectives = {
      "sigmoid": dict(weight=1.0, impl="global", bidirectional=False, exchange="text")
    }
    c.optim.update(lr=1e-3, b2=0.95, weight_decay=1e-4, warmup="2000 steps")
    c.data.update(mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))  # SigLIP normalises to [-1, 1]
    if variant == "tiny":
      c.model.embed_dim = 128
      c.model.image.update(variant="tiny/8", image_size=48)
      # The embedded tokenizer pads with its own pad id, so padding can be masked (shape zero-shot 0.48
      # vs 0.34 unmasked at 400 steps).
      c.model.text.update(variant="tiny", max_len=16, pad_id=0)
      c.optim.update(lr=2e-3, warmup="100 steps")
  return c.lock()
