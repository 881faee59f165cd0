"""SigLIP ViT-B/16: sigmoid loss with learnable temperature and bias (init t' = log 10, b = -10).

Architecture as the released SigLIP B/16 (and HF `SiglipModel`): patchify with bias, no class token, no
pre-LN, MAP-head pooling whose output is the image embedding, GELU (tanh), LayerNorm eps 1e-6; a
bidirectional 768-wide text tower read at its last position, with a biased linear head.

Trained as big_vision trains it (the card below; tests/test_reference_steps.py compares 30+ steps with
big_vision's update rule): Adam (b2 0.95) with gradients clipped at norm 1, weight decay 1e-4 *decoupled*
(`wd * schedule(t)`, not multiplied by the learning rate) on kernels only, warmup from 0, cosine decay,
the temperature and bias free (no clamp).

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
from vlm_jax.recipe_card import ON_CPU, Card, at_scale

VARIANTS = ("base", "paper", "tiny")
PAPER = "SigLIP paper (Zhai et al. 2023)"
BV = "google-research/big_vision @ 11eea57"
NOT_STATED = "not stated in the paper or big_vision's public configs; vlm_jax's choice"

# Measured 2026-12-04 (docs/benchmarks.md, "Per-chip efficiency on TPU pods"): the policy that
# recomputes least among those that fit the reference's batch on a v5e-256.
MEASURED = (
  "v5e:16x16 at batch 32768 (data:256): scanned without remat needs 33.6 GiB of temporaries "
  "(XLA refuses); dots_no_batch fits in 11.7 GiB a chip at 1.011x the model's FLOPs"
)

CARD = Card(
  reference=(
    f"{PAPER} for the numbers; {BV} `big_vision/optax.py` (`make`), `utils.py` "
    "(`create_learning_rate_schedule`), `models/proj/image_text/two_towers.py` and "
    "`trainers/proj/image_text/siglip.py` for how they are applied"
  ),
  reference_variant="paper",
  settings={
    "batch_size": (32768, f"{PAPER}: 32k suffices"),
    "train.duration": ("32 epochs", NOT_STATED),
    "model.image.variant": ("B/16", PAPER),
    "model.image.image_size": (224, PAPER),
    "model.text.max_len": (64, "the released SigLIP B/16 (64 tokens)"),
    "optim.name": ("adamw", "`optax.scale_by_adam` (big_vision's `optax_name`)"),
    "optim.lr": (1e-3, PAPER),
    "optim.b1": (0.9, "optax's default"),
    "optim.b2": (0.95, f"{PAPER}: b2 = 0.95 stabilises large-batch training"),
    "optim.eps": (1e-8, "optax's default (big_vision passes none)"),
    "optim.weight_decay": (1e-4, PAPER),
    "optim.weight_decay_mode": (
      "decoupled",
      "big_vision/optax.py: `wd * schedule(t)`, not times lr",
    ),
    "optim.decay_mask": ("big_vision", "big_vision/optax.py: `wd_mults` default `.*/kernel$`"),
    "optim.warmup": ("2000 steps", NOT_STATED),
    "optim.warmup_from": ("zero", "big_vision/utils.py: `lr * min(1, step / warmup_steps)`"),
    "optim.schedule": ("cosine", "big_vision's `decay_type='cosine'`"),
    "optim.end_lr_factor": (0.0, "big_vision's cosine ends at 0"),
    "optim.grad_clip_norm": (1.0, "big_vision's image_text configs (`grad_clip_norm = 1.0`)"),
    "model.logit_scale_init": (math.log(10.0), f"{PAPER}: t' = log 10"),
    "model.logit_bias_init": (-10.0, f"{PAPER}: b = -10"),
    "model.logit_scale_clamp": ("none", "big_vision two_towers.py: `exp(t)`, never clamped"),
    "objectives.sigmoid.impl": ("global", "the loss of trainers/proj/image_text/siglip.py"),
    "data.augment.crop_scale": (None, "the released models' preprocessing: resize, no crop"),
    "data.augment.flip": (False, "the released models' preprocessing: no flip"),
    "data.mean": ((0.5, 0.5, 0.5), "`value_range(-1, 1)`"),
    "data.std": ((0.5, 0.5, 0.5), "`value_range(-1, 1)`"),
    **at_scale("dots_no_batch", MEASURED),
  },
  variants={
    "base": {"batch_size": (64, "one CPU host")},
    "tiny": {
      **ON_CPU,
      "batch_size": (128, "the embedded data on 2 CPU cores"),
      "train.duration": ("400 steps", "the embedded data on 2 CPU cores"),
      "model.image.variant": ("tiny/8", "the embedded data on 2 CPU cores"),
      "model.image.image_size": (48, "the embedded data on 2 CPU cores"),
      "model.text.max_len": (16, "the embedded captions are short"),
      "optim.lr": (2e-3, "as CLIP tiny"),
      "optim.weight_decay": (2e-4, "the paper's wd / lr ratio (0.1) at the tiny learning rate"),
      "optim.warmup": ("100 steps", "a quarter of the 400-step run"),
    },
  },
  notes=("big_vision's SigLIP runs train on WebLI, which is not public.",),
)


def get_config(arg=None):
  variant = arg or "base"
  if variant not in VARIANTS:
    raise ValueError(f"unknown siglip_b16 variant {variant!r}; known: {', '.join(VARIANTS)}")
  c = config_utils.load_config(os.path.join(os.path.dirname(__file__), f"clip_b32.py:{variant}"))
  with c.unlocked():
    c.model.update(
      name="siglip",
      embed_dim=768,
      logit_scale_init=math.log(10.0),
      logit_scale_clamp="none",
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
    c.optim.update(
      name="adamw",
      lr=1e-3,
      b1=0.9,
      b2=0.95,
      eps=1e-8,
      weight_decay=1e-4,
      weight_decay_mode="decoupled",
      decay_mask="big_vision",
      warmup="2000 steps",
      warmup_from="zero",
      grad_clip_norm=1.0,
    )
    c.data.update(mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))  # SigLIP normalises to [-1, 1]
    # Not CLIP's BPE: SigLIP's own SentencePiece model (data.tokenizer=siglip with the released
    # checkpoint's spiece.model as data.tokenizer_path), or the data's own (the embedded data ships one).
    c.data.tokenizer = "sentencepiece"
    c.data.augment.update(crop_scale=None, flip=False)
    if variant == "tiny":
      c.model.embed_dim = 128
      c.model.image.update(variant="tiny/8", image_size=48)
      # The embedded tokenizer pads with its own pad id, so padding can be masked (shape zero-shot 0.48
      # vs 0.34 unmasked at 400 steps).
      c.model.text.update(variant="tiny", max_len=16, pad_id=0)
      c.optim.update(lr=2e-3, warmup="100 steps", weight_decay=2e-4)
  return c.lock()
