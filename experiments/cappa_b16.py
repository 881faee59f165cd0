"""CapPa B/16: an image captioner trained with parallel prediction (Tschannen et al. 2023, big_vision's cappa).

As the paper's B/16 (its `cappa` config): a 12-layer 768-wide encoder over 16x16 patches (no stem), a
6-layer decoder with cross-attention, text length 64; for 75% of the examples every decoder input is the
mask token and the decoder attends to all positions (parallel prediction), the rest are trained
autoregressively; AdamW lr 1e-3, weight decay 1e-4 (big_vision uses Adafactor). The encoder-decoder is
the `simvlm` model with its prefix reduced to the start token, so the encoder reads the image and one
constant token. Evaluated by captioning, zero-shot by caption likelihood and a linear probe on the
encoder's mean-pooled image tokens.

COMMAND:
  python -m vlm_jax.main --config experiments/cappa_b16.py:tiny --workdir runs/cappa_tiny
"""

import os

import ml_collections

from vlm_jax import config_utils


def get_config(arg=None):
  variant = arg or "base"
  if variant not in ("base", "tiny"):
    raise ValueError(f"unknown cappa_b16 variant {variant!r}; known: base, tiny")
  # SimVLM's encoder-decoder and evaluators at the same sizes, without the conv stem, a 6-layer decoder.
  c = config_utils.load_config(os.path.join(os.path.dirname(__file__), f"simvlm_base.py:{variant}"))
  with c.unlocked():
    c.model.image.stem = 0
    c.objectives = ml_collections.ConfigDict({"cappa": dict(weight=1.0, parallel_fraction=0.75)})
    probe = dict(
      every=c.evals.captioning.every,
      label_keys=("shape", "color"),
      shots=(1, 5, 10),
      train_limit=5000,
      limit=1000 if variant == "base" else c.evals.captioning.limit,
    )
    c.evals.linear_probe = probe
    if variant == "base":
      c.model.decoder.depth = 6
      c.optim.update(lr=1e-3, weight_decay=1e-4)
  return c.lock()
