"""ViLT-B/32: one transformer over image patches and words, trained with masked language modeling and
image-text matching (ITM) with hard negatives.

As ViLT (Kim et al. 2021) and HF `ViltModel`: a ViT-B/32-sized encoder (768 wide, 12 layers), BERT-style
text embeddings, modality-type embeddings, LayerNorm eps 1e-12, a tanh pooler; MLM (15%, 80/10/10,
whole words) + ITM (half of the pairs get another image of the batch). Negatives: `random`, `hard`
(the most similar non-matching image by the model's unimodal encodings) or `mixed`.
Trained as dandelin/ViLT trains it (the card below): transformers' AdamW with betas (0.9, 0.98), eps 1e-8,
lr 1e-4 and weight decay 0.01 (times lr) on everything but biases and LayerNorms, warmup from 0 over 10% of
the steps, linear decay to 0, dropout 0.1, batch 4096, 100k steps, random negatives for ITM.

Variants:
  (none)  the B/32 recipe on the embedded data, batch 64 at 224 px.
  paper   the paper's batch 4096, 384 px and 100k steps; for pods with real data.
  tiny    a small ViLT that learns the embedded data on 2 CPU cores.

COMMAND:
  python -m vlm_jax.main --config experiments/vilt_b32.py:tiny --workdir runs/vilt_tiny
"""

import ml_collections

from vlm_jax import defaults
from vlm_jax.recipe_card import ON_CPU, Card, at_scale

VARIANTS = ("base", "paper", "tiny")
REPO = "dandelin/ViLT @ 71f671d `vilt/config.py`, `vilt/modules/vilt_utils.py` (`set_schedule`), `run.py`"
PAPER = "ViLT paper (Kim et al. 2021), section 4"
TINY = "the embedded data on 2 CPU cores"

# Measured 2026-12-04 (docs/benchmarks.md, "Per-chip efficiency on TPU pods"): the policy that
# recomputes least among those that fit the reference's batch on a v5e-256.
MEASURED = "v5e:16x16 at batch 4096 (data:256): scanned without remat fits in 9.91 GiB a chip"

CARD = Card(
  reference=f"{PAPER} for the schedule's length; {REPO} for the optimizer and its conventions",
  reference_variant="paper",
  settings={
    "batch_size": (4096, "config.py `batch_size`"),
    "train.duration": ("100000 steps", f"{PAPER}: ViLT-B/32 100K (config.py `step100k`)"),
    "model.image.variant": ("B/32", "config.py `vit32_base`"),
    "model.image.image_size": (384, "config.py `image_size` (pixelbert: shorter side 384)"),
    "model.text.max_len": (40, "config.py `max_text_len`"),
    "model.dropout": (0.1, "config.py `drop_rate`"),
    "objectives.mlm.rate": (0.15, "config.py `mlm_prob`"),
    "objectives.mlm.whole_word": (True, f"{PAPER}: whole word masking (the released model)"),
    "objectives.itm.negative_rate": (0.5, "config.py `draw_false_image = 1`: half the pairs"),
    "objectives.itm.negatives": ("random", "ViLT draws false images at random"),
    "optim.name": ("adamw", "vilt_utils.py: transformers' `AdamW`"),
    "optim.lr": (1e-4, "config.py `learning_rate`"),
    "optim.b1": (0.9, "vilt_utils.py `betas=(0.9, 0.98)`"),
    "optim.b2": (0.98, "vilt_utils.py `betas=(0.9, 0.98)`"),
    "optim.eps": (1e-8, "vilt_utils.py `eps=1e-8`"),
    "optim.weight_decay": (0.01, "config.py `weight_decay`"),
    "optim.weight_decay_mode": ("lr_coupled", "transformers' AdamW decays `lr * wd * p`"),
    "optim.decay_mask": ("transformers", "vilt_utils.py `no_decay`: biases and (Layer)Norms"),
    "optim.warmup": ("10000 steps", f"{PAPER}: 10% of the steps"),
    "optim.warmup_from": ("zero", "transformers' `get_polynomial_decay_schedule_with_warmup`"),
    "optim.schedule": ("linear", "config.py `decay_power = 1`"),
    "optim.end_lr_factor": (0.0, "config.py `end_lr = 0`"),
    "optim.grad_clip_norm": (0.0, "run.py: the Trainer does not clip"),
    "data.augment.crop_scale": (None, "pixelbert transform: resize, no crop"),
    **at_scale("none", MEASURED),
  },
  variants={
    "base": {
      "batch_size": (64, "one CPU host"),
      "model.image.image_size": (224, "one CPU host"),
    },
    "tiny": {
      **ON_CPU,
      "batch_size": (128, TINY),
      "train.duration": ("400 steps", TINY),
      "model.image.variant": ("tiny/8", TINY),
      "model.image.image_size": (48, TINY),
      "model.text.max_len": (16, "the embedded captions are short"),
      "model.dropout": (0.0, "400 steps are too few to need it"),
      "objectives.itm.negatives": ("mixed", "tiny ViLT's ITM learns with mixed hard negatives"),
      "optim.lr": (1e-3, "a small model and batch learn in 400 steps at this rate"),
      "optim.warmup": ("50 steps", "an eighth of the 400-step run"),
    },
  },
  notes=(
    "ViLT's word-patch alignment loss (WPA) is not implemented.",
    "ViLT keeps each image's aspect ratio (shorter side 384, longer at most 640, up to 200 patches "
    "sampled); vlm_jax trains on square images.",
  ),
)


def get_config(arg=None):
  variant = arg or "base"
  if variant not in VARIANTS:
    raise ValueError(f"unknown vilt_b32 variant {variant!r}; known: {', '.join(VARIANTS)}")
  c = defaults.base_config()
  c.batch_size = {"base": 64, "paper": 4096, "tiny": 128}[variant]
  c.model.update(dict(name="vilt", ln_eps=1e-12, dropout=0.1))
  if variant != "tiny":
    c.model.update(scan_layers=True, remat="none")  # MEASURED
  c.model.image = ml_collections.ConfigDict(
    dict(variant="B/32", image_size=384 if variant == "paper" else 224, act="gelu")
  )
  c.model.text = ml_collections.ConfigDict(dict(max_len=40, pad_id=0))
  c.objectives = ml_collections.ConfigDict(
    {
      "mlm": dict(weight=1.0, rate=0.15, whole_word=True),
      "itm": dict(weight=1.0, negative_rate=0.5, negatives="random"),
    }
  )
  c.optim.update(
    name="adamw",
    lr=1e-4,
    b1=0.9,
    b2=0.98,
    eps=1e-8,
    weight_decay=0.01,
    weight_decay_mode="lr_coupled",
    decay_mask="transformers",
    warmup="10000 steps",
    warmup_from="zero",
    schedule="linear",
    end_lr_factor=0.0,
    grad_clip_norm=0.0,
  )
  c.data.augment.update(crop_scale=None, flip=False)
  c.train.duration = "100000 steps"
  c.evals = ml_collections.ConfigDict(
    {
      "itm_retrieval": dict(every="1 epochs", limit=100),
      "mlm_accuracy": dict(every="1 epochs", limit=500),
    }
  )
  if variant == "tiny":
    c.model.dropout = 0.0
    c.model.image.update(variant="tiny/8", image_size=48)
    c.model.text.max_len = 16
    c.objectives.itm = dict(weight=1.0, negative_rate=0.5, negatives="mixed", hard_fraction=0.5)
    c.optim.update(lr=1e-3, warmup="50 steps")
    c.train.update(duration="400 steps", log_every="50 steps", checkpoint_every="200 steps")
    c.evals.itm_retrieval.update(every="200 steps", limit=64)
    c.evals.mlm_accuracy.update(every="200 steps", limit=500)
  return c.lock()
