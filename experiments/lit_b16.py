"""LiT (locked-image tuning) ViT-B/16: a pretrained image tower, locked; a text tower trained from scratch.

The image tower and its projection come from `init_from.workdir`: any vlm_jax run (CLIP, SigLIP) or a
converted public checkpoint (`python -m vlm_jax.convert ...`). Locked means fixed: run in eval mode (no
dropout), no gradient, no optimizer update and no optimizer state. The loss is the contrastive one of the
source model (CLIP softmax by default; `--config.objectives` can switch to sigmoid). Any other parameter
group can be frozen with `optim.frozen` (a regex over parameter paths).

Trained as big_vision's LiT (the card below; tests/test_reference_steps.py compares 30+ steps with
big_vision's update rule): Adam, gradients clipped at norm 1, weight decay 0.01 decoupled (`wd *
schedule(t)`) on kernels, warmup from 0 over max(3% of the steps, 100), cosine decay, the temperature
initialised at 10 and left free, the softmax loss over the global batch. Images are normalised as the locked
tower's source run was (clip_b32's: CLIP's mean and std).

Variants:
  (none)  B/16 image tower, B text tower, batch 64 (as clip_b32's base variant); set init_from.workdir.
  paper   big_vision's lit_coco.py schedule and batch (4096, 5000 steps); for pods with real data.
  tiny    the shape of clip_b32.py:tiny; init from a clip_b32.py:tiny run.

COMMAND:
  python -m vlm_jax.main --config experiments/clip_b32.py:tiny --workdir runs/clip_tiny
  python -m vlm_jax.main --config experiments/lit_b16.py:tiny --workdir runs/lit_tiny \\
      --config.init_from.workdir=runs/clip_tiny
"""

import math
import os

from vlm_jax import config_utils
from vlm_jax.recipe_card import ON_CPU, Card, at_scale

VARIANTS = ("base", "paper", "tiny")
LIT = "google-research/big_vision @ 4cf5c02 `big_vision/configs/proj/image_text/lit_coco.py`"
BV = "big_vision @ 11eea57 `big_vision/optax.py` and `utils.py`"
TINY = "the embedded data on 2 CPU cores"

# Measured 2026-12-04 (docs/benchmarks.md, "Per-chip efficiency on TPU pods"): the policy that
# recomputes least among those that fit the reference's batch on a v5e-256.
MEASURED = (
  "v5e:16x16 at batch 4096 (data:256): scanned without remat fits in 1.96 GiB a chip (the "
  "locked image tower keeps no activations for a backward pass)"
)

CARD = Card(
  reference=f"LiT (Zhai et al. 2022) as {LIT} trains it, with {BV}",
  reference_variant="paper",
  settings={
    "batch_size": (4096, "lit_coco.py"),
    "train.duration": ("5000 steps", "lit_coco.py `total_steps`"),
    "model.locked": (("image",), "lit_coco.py: `('img/.*', None)` freezes the image tower"),
    "optim.name": ("adamw", "lit_coco.py: `scale_by_adam` (its text tower is not Adafactor's)"),
    "optim.lr": (1e-3, "lit_coco.py"),
    "optim.b1": (0.9, "optax's default"),
    "optim.b2": (0.999, "optax's default"),
    "optim.eps": (1e-8, "optax's default"),
    "optim.weight_decay": (0.01, "lit_coco.py `wd`"),
    "optim.weight_decay_mode": ("decoupled", "big_vision/optax.py: `wd * schedule(t)`"),
    "optim.decay_mask": ("big_vision", "big_vision/optax.py: `.*/kernel$`"),
    "optim.warmup": ("150 steps", "lit_coco.py: max(3% of 5000 steps, 100)"),
    "optim.warmup_from": ("zero", "big_vision/utils.py `create_learning_rate_schedule`"),
    "optim.schedule": ("cosine", "lit_coco.py `decay_type='cosine'`"),
    "optim.end_lr_factor": (0.0, "big_vision's cosine ends at 0"),
    "optim.grad_clip_norm": (1.0, "lit_coco.py"),
    "model.logit_scale_init": (math.log(10.0), "lit_coco.py `temperature_init = 10.0`"),
    "model.logit_scale_clamp": ("none", "big_vision two_towers.py: `exp(t)`, never clamped"),
    "objectives.clip.impl": ("global", "lit_coco.py `loss_use_global_batch = True`"),
    "data.augment.crop_scale": (None, "lit_coco.py: `resize(224)`, no crop"),
    "data.augment.flip": (True, "lit_coco.py `flip_lr`"),
    **at_scale("none", MEASURED),
  },
  variants={
    "base": {
      "batch_size": (64, "one CPU host"),
      "data.augment.flip": (False, "the embedded captions say left and right"),
    },
    "tiny": {
      **ON_CPU,
      "batch_size": (128, TINY),
      "train.duration": ("400 steps", TINY),
      "optim.warmup": ("100 steps", "a quarter of the 400-step run"),
      "data.augment.flip": (False, "the embedded captions say left and right"),
    },
  },
  notes=(
    "lit_coco.py's `randaug(2, 10)` is not implemented in vlm_jax.",
    "big_vision's LiT text tower is a pretrained BERT; here the text tower is CLIP's, trained from "
    "scratch, and the locked image tower comes from `init_from` (a vlm_jax run or converted model).",
    "The text is tokenized as clip_b32.py's: CLIP's BPE, shipped with vlm_jax (the tiny variant: the "
    "embedded data's SentencePiece model).",
  ),
)


def get_config(arg=None):
  variant = arg or "base"
  if variant not in VARIANTS:
    raise ValueError(f"unknown lit_b16 variant {variant!r}; known: {', '.join(VARIANTS)}")
  source = "tiny" if variant == "tiny" else "base"
  c = config_utils.load_config(os.path.join(os.path.dirname(__file__), f"clip_b32.py:{source}"))
  with c.unlocked():
    c.model.locked = ("image",)
    if variant != "tiny":
      c.model.image.variant = "B/16"
    c.model.update(logit_scale_init=math.log(10.0), logit_scale_clamp="none")
    if variant != "tiny":
      c.model.remat = "none"  # MEASURED
    c.optim.update(
      name="adamw",
      lr=1e-3,
      b1=0.9,
      b2=0.999,
      eps=1e-8,
      weight_decay=0.01,
      weight_decay_mode="decoupled",
      decay_mask="big_vision",
      warmup="150 steps",
      warmup_from="zero",
      schedule="cosine",
      grad_clip_norm=1.0,
    )
    c.data.augment.update(crop_scale=None, flip=variant == "paper")
    if variant == "paper":
      c.batch_size = 4096
    if variant == "tiny":
      c.optim.warmup = "100 steps"
    else:
      c.train.duration = "5000 steps"
    # workdir: a run or converted model; step -1: its latest checkpoint; include: the parameter paths to
    # load (here the image tower and its projection, everything named image_*).
    c.init_from.include = "image_.*"
  return c.lock()
