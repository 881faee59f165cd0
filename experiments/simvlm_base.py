"""SimVLM-Base: an encoder-decoder PrefixLM over [image; text prefix].

As SimVLM (Wang et al. 2022), Base size: a 12-layer 768-wide bidirectional encoder over image patches
(16x16 at 224px, after a convolutional stem: two 3x3 convolutions here in place of the paper's ResNet
stages) followed by the text prefix, a 12-layer decoder that continues the text, shared word embeddings.
PrefixLM on captions with the split point sampled per example (start token + up to half the caption), plus
text-only PrefixLM batches (the image hidden) mixed in with weight `objectives.text_lm.weight`.
Evaluated by captioning (shape / colour named, BLEU-1..4, ROUGE-L, CIDEr-D) and zero-shot classification
by the likelihood of "a photo of a {label}".

Trained as the paper's section 4.1 says (the card below): AdamW (0.9, 0.999), weight decay 0.01, peak lr
5e-4 after a warmup over the first 2% of the ~1M steps, then linear decay; 4,096 image-text pairs and 512
text-only documents per batch, which vlm_jax mixes as a text-only PrefixLM loss weighted 512 / 4096. No
code was published, so conventions the paper does not state are said to be vlm_jax's on the card.

Variants:
  (none)  the Base recipe on the embedded data, batch 64.
  paper   the paper's batch 4096 and 1M steps; for pods with real data.
  tiny    a small SimVLM that learns the embedded data on 2 CPU cores.

COMMAND:
  python -m vlm_jax.main --config experiments/simvlm_base.py:tiny --workdir runs/simvlm_tiny
"""

import ml_collections

from vlm_jax import defaults
from vlm_jax.recipe_card import ON_CPU, Card, at_scale

LIKELIHOOD_TEMPLATES = ("a photo of a {}",)
VARIANTS = ("base", "paper", "tiny")
PAPER = "SimVLM paper (Wang et al. 2022, ICLR), section 4.1"
NOT_STATED = "not stated by the paper (no code was published); vlm_jax's choice"
TINY = "the embedded data on 2 CPU cores"

# Measured 2026-12-04 (docs/benchmarks.md, "Per-chip efficiency on TPU pods"): the policy that
# recomputes least among those that fit the reference's batch on a v5e-256.
MEASURED = (
  "v5e:16x16 at batch 4096 (data:256): scanned without remat needs 22.6 GiB a chip; "
  "dots_no_batch fits in 8.96 GiB at 1.014x the model's FLOPs"
)

CARD = Card(
  reference=PAPER,
  reference_variant="paper",
  settings={
    "batch_size": (4096, f"{PAPER}: 4,096 image-text pairs per batch"),
    "train.duration": ("1000000 steps", f"{PAPER}: about 1M steps"),
    "model.image.variant": ("B/16", f"{PAPER}: ViT-Base, 16x16 patches"),
    "model.image.image_size": (224, PAPER),
    "objectives.text_lm.weight": (0.125, f"{PAPER}: 512 text-only documents per 4,096 pairs"),
    "optim.name": ("adamw", f"{PAPER}: AdamW"),
    "optim.lr": (5e-4, f"{PAPER}: peak 5e-4"),
    "optim.b1": (0.9, PAPER),
    "optim.b2": (0.999, PAPER),
    "optim.eps": (1e-8, NOT_STATED + " (AdamW's default)"),
    "optim.weight_decay": (0.01, PAPER),
    "optim.weight_decay_mode": ("lr_coupled", "AdamW"),
    "optim.decay_mask": ("transformers", NOT_STATED),
    "optim.warmup": ("20000 steps", f"{PAPER}: the first 2% of updates"),
    "optim.warmup_from": ("zero", NOT_STATED),
    "optim.schedule": ("linear", f"{PAPER}: linear decay after the warmup"),
    "optim.end_lr_factor": (0.0, f"{PAPER}: linear decay (to 0)"),
    "optim.grad_clip_norm": (0.0, NOT_STATED),
    "objectives.prefix_lm.normalize": ("per_token", NOT_STATED),
    "data.augment.crop_scale": (None, NOT_STATED),
    **at_scale("dots_no_batch", MEASURED),
  },
  variants={
    "base": {"batch_size": (64, "one CPU host")},
    "tiny": {
      **ON_CPU,
      "batch_size": (128, TINY),
      "train.duration": ("400 steps", TINY),
      "model.image.variant": ("tiny/8", TINY),
      "model.image.image_size": (48, TINY),
      "optim.lr": (2e-3, "a small model and batch learn in 400 steps at this rate"),
      "optim.weight_decay": (
        0.1,
        "measured on the embedded data before the conventions were named",
      ),
      "optim.warmup": ("50 steps", "an eighth of the 400-step run"),
    },
  },
  notes=(
    "The paper's image stem is the first three ResNet stages; vlm_jax's is two 3x3 convolutions.",
    "The paper's text-only batches are C4 documents; vlm_jax's hide the image of a caption.",
  ),
)


def get_config(arg=None):
  variant = arg or "base"
  if variant not in VARIANTS:
    raise ValueError(f"unknown simvlm_base variant {variant!r}; known: {', '.join(VARIANTS)}")
  c = defaults.base_config()
  c.model.update(dict(name="simvlm", act="gelu", dropout=0.0))
  if variant != "tiny":
    c.model.update(scan_layers=True, remat="dots_no_batch")  # MEASURED
  c.model.image = ml_collections.ConfigDict(dict(variant="B/16", image_size=224, stem=64))
  c.model.text = ml_collections.ConfigDict(dict(max_len=64))
  c.model.encoder = ml_collections.ConfigDict(dict(variant="B"))
  c.model.decoder = ml_collections.ConfigDict(dict(variant="B"))
  c.objectives = ml_collections.ConfigDict(
    {
      "prefix_lm": dict(weight=1.0, prefix_min=0.0, prefix_max=0.5, normalize="per_token"),
      "text_lm": dict(
        name="prefix_lm", weight=0.125, prefix_min=0.0, prefix_max=0.5, text_only=True
      ),
    }
  )
  c.optim.update(
    name="adamw",
    lr=5e-4,
    b1=0.9,
    b2=0.999,
    eps=1e-8,
    weight_decay=0.01,
    weight_decay_mode="lr_coupled",
    decay_mask="transformers",
    warmup="20000 steps",
    warmup_from="zero",
    schedule="linear",
    end_lr_factor=0.0,
    grad_clip_norm=0.0,
  )
  c.train.duration = "1000000 steps"
  if variant == "paper":
    c.batch_size = 4096
  c.evals = ml_collections.ConfigDict(
    {
      "captioning": dict(every="1 epochs", label_keys=("shape", "color"), limit=500),
      "zero_shot_likelihood": dict(
        every="1 epochs", label_keys=("shape", "color"), templates=LIKELIHOOD_TEMPLATES, limit=500
      ),
    }
  )
  if variant == "tiny":
    c.batch_size = 128
    c.model.image.update(variant="tiny/8", image_size=48, stem=16)
    c.model.text.update(max_len=16)
    c.model.encoder.update(variant="tiny", depth=3)
    c.model.decoder.update(variant="tiny", depth=2)
    c.optim.update(lr=2e-3, warmup="50 steps", weight_decay=0.1)
    c.train.update(duration="400 steps", log_every="50 steps", checkpoint_every="200 steps")
    for name in c.evals:
      c.evals[name].every = "200 steps"
      c.evals[name].limit = 256
  return c.lock()
