"""CapPa B/16: an image captioner trained with parallel prediction (Tschannen et al. 2023, big_vision's cappa).

big_vision's CapPa (the card below): a 12-layer 768-wide ViT encoder over 16x16 patches that reads the
image only, a 6-layer decoder with cross-attention and no biases in its blocks, a separate zero-initialised
output layer, and a mask token outside the output vocabulary; for 75% of the examples every decoder input
is the mask token and the decoder attends to all positions (parallel prediction), the rest are trained
autoregressively; the loss is normalised per caption. big_vision's Adafactor (factored second moment,
momentum 0.9 kept in bfloat16), gradients clipped at norm 1, lr 1e-3, weight decay 1e-4 decoupled on
kernels, 10k warmup steps from 0, cosine decay. tests/test_reference_steps.py compares 30+ steps with
big_vision's update rule and loss. The model is the `simvlm` encoder-decoder with big_vision's options.
Evaluated by captioning, zero-shot by caption likelihood and a linear probe on the encoder's mean-pooled
image tokens.

Variants:
  (none)  the B/16 recipe on the embedded data, batch 64.
  paper   big_vision's batch 8192 and 366,500 steps; for pods with real data.
  tiny    a small CapPa that learns the embedded data on 2 CPU cores.

COMMAND:
  python -m vlm_jax.main --config experiments/cappa_b16.py:tiny --workdir runs/cappa_tiny
"""

import os

import ml_collections

from vlm_jax import config_utils
from vlm_jax.recipe_card import ON_CPU, Card, at_scale

VARIANTS = ("base", "paper", "tiny")
BV = "google-research/big_vision"
CFG = f"{BV} @ 7ace659 `big_vision/configs/proj/cappa/pretrain.py`"
MODEL = f"{BV} @ 3509c45 `big_vision/models/proj/cappa/cappa.py`"
TRAINER = f"{BV} @ 3509c45 `big_vision/trainers/proj/cappa/generative.py`"
OPTAX = f"{BV} @ 11eea57 `big_vision/optax.py`"
TINY = "the embedded data on 2 CPU cores"

# Measured 2026-12-04 (docs/benchmarks.md, "Per-chip efficiency on TPU pods"): the policy that
# recomputes least among those that fit the reference's batch on a v5e-256.
MEASURED = "v5e:16x16 at batch 8192 (data:256): scanned without remat fits in 9.45 GiB a chip"

CARD = Card(
  reference=f"CapPa (Tschannen et al. 2023) as {CFG} trains it, with {MODEL}, {TRAINER} and {OPTAX}",
  reference_variant="paper",
  settings={
    "batch_size": (8192, "pretrain.py `batch_size=8*1024`"),
    "train.duration": ("366500 steps", "pretrain.py `total_steps`"),
    "model.image.variant": ("B/16", "pretrain.py: patch 16, 12 layers, width 768"),
    "model.image.image_size": (224, "pretrain.py `res = 224`"),
    "model.text.max_len": (64, "pretrain.py `max_text_tokens`"),
    "model.decoder.depth": (6, "pretrain.py `decoder_num_layers`"),
    "model.encoder_text": (False, "cappa.py: the encoder is a ViT over the image"),
    "model.decoder_bias": (False, "pretrain.py `decoder_bias = False`"),
    "model.head": ("untied", "cappa.py `LogitsDense`, `kernel_init=zeros`"),
    "model.text.mask_token": (True, "cappa.py: the mask id is `vocab_size`, one more input row"),
    "model.ln_eps": (1e-6, "flax's LayerNorm default, which cappa.py uses"),
    "objectives.cappa.parallel_fraction": (0.75, "pretrain.py `masked_pred_prob`"),
    "objectives.cappa.normalize": (
      "per_example",
      "generative.py: `weighted_softmax_xent(normalize=True)`",
    ),
    "optim.name": ("adafactor", "pretrain.py `optax_name = 'big_vision.scale_by_adafactor'`"),
    "optim.lr": (1e-3, "pretrain.py"),
    "optim.b1": (0.9, "scale_by_adafactor `momentum=0.9`"),
    "optim.b2": (0.999, "pretrain.py `optax = dict(beta2_cap=0.999)`"),
    "optim.eps": (1e-30, "scale_by_adafactor `eps`"),
    "optim.mu_dtype": ("bfloat16", "scale_by_adafactor `dtype_momentum=jnp.bfloat16`"),
    "optim.adafactor": (
      {"decay_rate": 0.8, "min_dim_size_to_factor": 32},
      "scale_by_adafactor's defaults",
    ),
    "optim.weight_decay": (1e-4, "pretrain.py `wd`"),
    "optim.weight_decay_mode": ("decoupled", "big_vision/optax.py: `wd * schedule(t)`"),
    "optim.decay_mask": ("big_vision", "big_vision/optax.py: `.*/kernel$`"),
    "optim.warmup": ("10000 steps", "pretrain.py `warmup_steps`"),
    "optim.warmup_from": ("zero", "big_vision/utils.py `create_learning_rate_schedule`"),
    "optim.schedule": ("cosine", "pretrain.py `decay_type='cosine'`"),
    "optim.end_lr_factor": (0.0, "big_vision's cosine ends at 0"),
    "optim.grad_clip_norm": (1.0, "pretrain.py"),
    "data.augment.crop_scale": (None, "pretrain.py: `resize(224)`, no crop"),
    "data.augment.flip": (False, "pretrain.py: no flip"),
    "data.mean": ((0.5, 0.5, 0.5), "pretrain.py `value_range(-1, 1)`"),
    "data.std": ((0.5, 0.5, 0.5), "pretrain.py `value_range(-1, 1)`"),
    **at_scale("none", MEASURED),
  },
  variants={
    "base": {"batch_size": (64, "one CPU host")},
    "tiny": {
      **ON_CPU,
      "batch_size": (128, TINY),
      "train.duration": ("400 steps", TINY),
      "model.image.variant": ("tiny/8", TINY),
      "model.image.image_size": (48, TINY),
      "model.text.max_len": (16, "the embedded captions are short"),
      "model.decoder.depth": (2, TINY),
      "optim.warmup": ("50 steps", "an eighth of the 400-step run"),
    },
  },
  notes=(
    "big_vision tokenizes with the c4_en SentencePiece model (32k pieces); the embedded data brings "
    "its own 640-piece model, and real data names its tokenizer in `data.tokenizer_path`.",
    "Initialisation follows vlm_jax's layers (e.g. word embeddings N(0, 0.02), not big_vision's N(0, 1)).",
    "The tiny variant keeps the paper's optimizer and learns the embedded data more slowly than the "
    "AdamW one before it (captions name the shape 0.13 vs 0.47 after 400 steps, 2026-12-03); twice "
    "the learning rate did not help (CIDEr-D 1.00 vs 1.32).",
  ),
)


def get_config(arg=None):
  variant = arg or "base"
  if variant not in VARIANTS:
    raise ValueError(f"unknown cappa_b16 variant {variant!r}; known: {', '.join(VARIANTS)}")
  # SimVLM's encoder-decoder and evaluators at the same sizes, with big_vision's CapPa options.
  source = "tiny" if variant == "tiny" else "base"
  c = config_utils.load_config(os.path.join(os.path.dirname(__file__), f"simvlm_base.py:{source}"))
  with c.unlocked():
    c.model.image.stem = 0
    if variant != "tiny":
      c.model.remat = "none"  # MEASURED
    c.model.update(encoder_text=False, decoder_bias=False, head="untied", ln_eps=1e-6)
    c.model.text.mask_token = True
    c.objectives = ml_collections.ConfigDict(
      {"cappa": dict(weight=1.0, parallel_fraction=0.75, normalize="per_example")}
    )
    c.optim.update(
      name="adafactor",
      lr=1e-3,
      b1=0.9,
      b2=0.999,
      eps=1e-30,
      mu_dtype="bfloat16",
      weight_decay=1e-4,
      weight_decay_mode="decoupled",
      decay_mask="big_vision",
      warmup="10000 steps",
      warmup_from="zero",
      schedule="cosine",
      end_lr_factor=0.0,
      grad_clip_norm=1.0,
    )
    c.optim.adafactor.update(decay_rate=0.8, min_dim_size_to_factor=32)
    c.data.update(mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))
    c.data.augment.update(crop_scale=None, flip=False)
    probe = dict(
      every=c.evals.captioning.every,
      label_keys=("shape", "color"),
      shots=(1, 5, 10),
      train_limit=5000,
      limit=c.evals.captioning.limit if variant == "tiny" else 1000,
    )
    c.evals.linear_probe = probe
    if variant == "tiny":
      c.optim.warmup = "50 steps"
    else:
      c.model.decoder.depth = 6
      c.model.text.max_len = 64
      c.train.duration = "366500 steps"
    if variant == "paper":
      c.batch_size = 8192
  return c.lock()
