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

import ml_collections

from vlm_jax import defaults

LIKELIHOOD_TEMPLATES = ("a photo of a {}",)


def get_config(arg=None):
  variant = arg or "base"
  if variant not in ("base", "tiny"):
    raise ValueError(f"unknown cappa_b16 variant {variant!r}; known: base, tiny")
  c = defaults.base_config()
  c.model.update(dict(name="simvlm", act="gelu", dropout=0.0))
  c.model.image = ml_collections.ConfigDict(dict(variant="B/16", image_size=224, stem=0))
  c.model.text = ml_collections.ConfigDict(dict(max_len=64))
  c.model.encoder = ml_collections.ConfigDict(dict(variant="B"))
  c.model.decoder = ml_collections.ConfigDict(dict(variant="B", depth=6))
  c.objectives = ml_collections.ConfigDict({"cappa": dict(weight=1.0, parallel_fraction=0.75)})
  c.optim.update(lr=1e-3, weight_decay=1e-4, b2=0.999, warmup="2000 steps")
  labels = ("shape", "color")
  c.evals = ml_collections.ConfigDict(
    {
      "captioning": dict(every="1 epochs", label_keys=labels, limit=500),
      "zero_shot_likelihood": dict(
        every="1 epochs", label_keys=labels, templates=LIKELIHOOD_TEMPLATES, limit=500
      ),
      "linear_probe": dict(
        every="1 epochs", label_keys=labels, shots=(1, 5, 10), train_limit=5000, limit=1000
      ),
    }
  )
  if variant == "tiny":
    c.batch_size = 128
    c.model.image.update(variant="tiny/8", image_size=48)
    c.model.text.update(max_len=16)
    c.model.encoder.update(variant="tiny", depth=3)
    c.model.decoder.update(variant="tiny", depth=2)
    c.optim.update(lr=2e-3, warmup="50 steps", weight_decay=0.1)
    c.train.update(duration="400 steps", log_every="50 steps", checkpoint_every="200 steps")
    for name in c.evals:
      c.evals[name].every = "200 steps"
      c.evals[name].limit = 256
  return c.lock()
