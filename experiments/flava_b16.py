"""FLAVA ViT-B/16: image, text and multimodal encoders trained with global contrastive, masked image
modeling, masked language modeling, masked multimodal modeling and image-text matching (hard negatives
from the contrastive scores), each switchable and weighted in `objectives`.

As FLAVA (Singh et al. 2022): B/16 image and 768-wide text encoders, a 6-layer multimodal encoder,
768-d contrastive embeddings. MIM targets: normalised pixels (`target="pixel"`, default) or visual tokens
from a k-means patch codebook (`target="codebook"`, with `model.mim_codes` = its size); no pretrained
dVAE can be downloaded here. Fit a codebook with:
  python -m vlm_jax.tools.codebook --config experiments/flava_b16.py:tiny --size 256 --output runs/codebook.npy

Trained as facebookresearch/multimodal's FLAVA example trains it (the card below): PyTorch AdamW on every
parameter (lr 2e-4, betas (0.9, 0.999), eps 1e-8, weight decay 0.01 times lr), warmup from 0 over 2000
steps, cosine decay over 450k steps, the logit scale clamped to [0, ln 100] as torchmultimodal's
contrastive loss does.

COMMAND:
  python -m vlm_jax.main --config experiments/flava_b16.py:tiny --workdir runs/flava_tiny
"""

import math

import ml_collections

from vlm_jax import defaults
from vlm_jax.recipe_card import ON_CPU, Card, at_scale

VARIANTS = ("base", "tiny")
REPO = (
  "facebookresearch/multimodal @ 0544cc9 `examples/flava/model.py` "
  "(`get_optimizers_for_lightning`, `FLAVAPreTrainingLightningModule`) and "
  "`examples/flava/configs/pretraining/debug.yaml`"
)
TM = "torchmultimodal `ContrastiveLossWithTemperature`"

# Measured 2026-12-04 (docs/benchmarks.md, "Per-chip efficiency on TPU pods"): the policy that
# recomputes least among those that fit the reference's batch on a v5e-256.
MEASURED = (
  "v5e:16x16 at batch 4096 (data:256; the repository fixes only a per-device batch): scanned "
  "without remat needs 19.1 GiB a chip; dots_no_batch fits in 11.3 GiB at 1.013x the model's "
  "FLOPs"
)

CARD = Card(
  reference=f"FLAVA (Singh et al. 2022) as {REPO} trains it",
  reference_variant="base",
  settings={
    "train.duration": ("450000 steps", "debug.yaml `max_steps`"),
    "model.image.variant": ("B/16", "FLAVA's ViT-B/16 image encoder"),
    "model.image.image_size": (224, "FLAVA's image encoder"),
    "optim.name": ("adamw", "model.py: `torch.optim.AdamW`"),
    "optim.lr": (2e-4, "debug.yaml `learning_rate`"),
    "optim.b1": (0.9, "model.py `adam_betas=(0.9, 0.999)`"),
    "optim.b2": (0.999, "model.py `adam_betas=(0.9, 0.999)`"),
    "optim.eps": (1e-8, "debug.yaml `adam_eps`"),
    "optim.weight_decay": (0.01, "debug.yaml `adam_weight_decay`"),
    "optim.weight_decay_mode": ("lr_coupled", "PyTorch AdamW decays `lr * wd * p`"),
    "optim.decay_mask": ("all", "model.py: AdamW over `model.parameters()`, no groups"),
    "optim.warmup": ("2000 steps", "debug.yaml `warmup_steps`"),
    "optim.warmup_from": ("zero", "transformers' `get_cosine_schedule_with_warmup`"),
    "optim.schedule": ("cosine", "transformers' `get_cosine_schedule_with_warmup`"),
    "optim.end_lr_factor": (0.0, "transformers' cosine ends at 0"),
    "optim.grad_clip_norm": (0.0, "debug.yaml's Lightning trainer does not clip"),
    "model.logit_scale_init": (math.log(1 / 0.07), TM),
    "model.logit_scale_min": (0.0, f"{TM}: `logit_scale_min = log(1)`"),
    "model.logit_scale_max": (math.log(100.0), f"{TM}: `logit_scale_max = log(100)`"),
    "model.logit_scale_clamp": ("parameter", f"{TM} clamps the parameter itself"),
    "data.augment.crop_scale": (None, "vlm_jax's choice (FLAVA's transforms differ per dataset)"),
    **at_scale("dots_no_batch", MEASURED),
  },
  variants={
    "tiny": {
      **ON_CPU,
      "train.duration": ("400 steps", "the embedded data on 2 CPU cores"),
      "model.image.variant": ("tiny/8", "the embedded data on 2 CPU cores"),
      "model.image.image_size": (48, "the embedded data on 2 CPU cores"),
      "optim.lr": (2e-3, "a small model and batch learn in 400 steps at this rate"),
      "optim.warmup": ("50 steps", "an eighth of the 400-step run"),
    },
  },
  notes=(
    "The repository's config trains on 8 examples per device; it fixes no global batch. The base "
    "variant uses 64.",
    "MIM targets are normalised pixels or a k-means codebook: no pretrained dVAE can be downloaded here.",
  ),
)


def get_config(arg=None):
  variant = arg or "base"
  if variant not in VARIANTS:
    raise ValueError(f"unknown flava_b16 variant {variant!r}; known: {', '.join(VARIANTS)}")
  c = defaults.base_config()
  c.model.update(
    dict(
      name="flava",
      embed_dim=768,
      mim_codes=0,
      logit_scale_init=math.log(1 / 0.07),
      logit_scale_min=0.0,
      logit_scale_max=math.log(100.0),
      logit_scale_clamp="parameter",
    )
  )
  if variant != "tiny":
    c.model.update(scan_layers=True, remat="dots_no_batch")  # MEASURED
  c.model.image = ml_collections.ConfigDict(dict(variant="B/16", image_size=224, act="gelu"))
  c.model.text = ml_collections.ConfigDict(
    dict(variant="L", max_len=40, act="gelu")
  )  # 768 wide, 12 layers
  c.model.multimodal = ml_collections.ConfigDict(dict(variant="B", depth=6))
  mim = dict(target="pixel", codebook_path="")
  c.objectives = ml_collections.ConfigDict(
    {
      "clip": dict(weight=1.0, impl="global"),
      "mim": dict(weight=1.0, rate=0.4, **mim),
      "mlm": dict(weight=1.0, rate=0.15, whole_word=True, method="text_mlm_logits"),
      "mmm": dict(weight=1.0, rate=0.15, whole_word=True, image_rate=0.4, **mim),
      "itm": dict(weight=1.0, negative_rate=0.5, negatives="hard"),
    }
  )
  c.optim.update(
    name="adamw",
    lr=2e-4,
    b1=0.9,
    b2=0.999,
    eps=1e-8,
    weight_decay=0.01,
    weight_decay_mode="lr_coupled",
    decay_mask="all",
    warmup="2000 steps",
    warmup_from="zero",
    schedule="cosine",
    end_lr_factor=0.0,
    grad_clip_norm=0.0,
  )
  c.data.augment.update(crop_scale=None, flip=False)
  c.train.duration = "450000 steps"
  # ITM re-ranks each query's 16 best contrastive candidates (FLAVA's protocol); rerank_k=0 scores all pairs.
  c.evals.update(
    dict(
      itm_retrieval=dict(every="1 epochs", limit=1000, rerank_k=16),
      mlm_accuracy=dict(every="1 epochs", limit=500, method="text_mlm_logits"),
    )
  )
  if variant == "tiny":
    c.batch_size = 128
    c.model.embed_dim = 128
    c.model.image.update(variant="tiny/8", image_size=48)
    c.model.text.update(variant="tiny", max_len=16)
    c.model.multimodal.update(variant="tiny", depth=2)
    c.optim.update(lr=2e-3, warmup="50 steps")
    c.train.update(duration="400 steps", log_every="50 steps", checkpoint_every="200 steps")
    for name in ("zero_shot", "retrieval", "itm_retrieval", "mlm_accuracy"):
      c.evals[name].every = "200 steps"
    c.evals.itm_retrieval.update(limit=64, rerank_k=0)
    # The embedded captions often leave out an attribute (size, position), so the image that scores best
    # against a caption is often a true match, and ITM has four other losses to compete with. Measured
    # (README): with hard or mixed negatives at weight 1, FLAVA tiny's ITM stays at chance for 400 steps;
    # with random negatives at weight 4 it leaves chance before step 200.
    c.objectives.itm.update(negatives="random", weight=4.0)
  return c.lock()
