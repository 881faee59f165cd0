"""Decoder-only prefix-LM with a vision projector: ViT-B/16 -> 2-layer MLP projector -> image tokens in
front of the text in a 12-layer 768-wide decoder, with full attention over [image; prefix] and causal
attention over the rest. Trained on captions as PrefixLM (the split point sampled per example: start token
plus up to half the caption) and on question -> answer pairs; evaluated by captioning (shape / colour named,
BLEU, ROUGE-L, CIDEr-D against every reference caption), VQA accuracy per question type, and zero-shot
classification by the likelihood of "a photo of a {label}".

The `tiny` variant trains on the embedded data's 1-3 object variant (`data.max_objects=3`) so that counting
questions mean something. For the frozen-LM and staged (projector first, then LM) recipes see
experiments/llava_stages.py.

No published recipe trains this model from scratch: the architecture follows LLaVA-1.5 (a 2-layer GELU MLP
projector into the LM), the objective SimVLM's PrefixLM, and the optimizer's conventions those of the HF
Trainer that LLaVA trains with (AdamW (0.9, 0.999), eps 1e-8, decay times lr on all but biases and
LayerNorms, warmup from 0, cosine, gradients clipped at norm 1). The learning rate, weight decay and
lengths are vlm_jax's; the card says which is which.

COMMAND:
  python -m vlm_jax.main --config experiments/prefixlm_b16.py:tiny --workdir runs/prefixlm_tiny
"""

import ml_collections

from vlm_jax import defaults
from vlm_jax.recipe_card import ON_CPU, Card, at_scale

LIKELIHOOD_TEMPLATES = ("a photo of a {}",)
VARIANTS = ("base", "tiny")
HF = "the HF Trainer's defaults (transformers `TrainingArguments`), which LLaVA's scripts use"
OURS = "vlm_jax's (no reference trains this model from scratch)"
TINY = "the embedded data on 2 CPU cores"
TINY_OPTIM = (
  "measured on the embedded data (2026-12-03): with b2 0.98 and no clipping, VQA 0.858 and counting "
  "0.92 after 400 steps; with the HF Trainer's b2 0.999 and clipping at 1, 0.759 and 0.60 (chance 0.33)"
)

# Measured 2026-12-04 (docs/benchmarks.md, "Per-chip efficiency on TPU pods"): the policy that
# recomputes least among those that fit a pod's batch on a v5e-256.
MEASURED = (
  "v5e:16x16 at batch 4096 (data:256; no reference fixes one for this model): scanned without "
  "remat needs 20.3 GiB a chip; dots_no_batch fits in 6.55 GiB at 1.017x the model's FLOPs"
)

CARD = Card(
  reference=(
    "none for the whole recipe; LLaVA-1.5 (haotian-liu/LLaVA, `llava/model/multimodal_projector`: "
    "`mlp2x_gelu`) for the projector and " + HF + " for the optimizer's conventions"
  ),
  reference_variant="base",
  settings={
    "model.projector": ("mlp", "LLaVA-1.5 `mlp2x_gelu`"),
    "optim.name": ("adamw", HF),
    "optim.lr": (3e-4, OURS),
    "optim.b1": (0.9, HF),
    "optim.b2": (0.999, HF),
    "optim.eps": (1e-8, HF),
    "optim.weight_decay": (0.05, OURS),
    "optim.weight_decay_mode": ("lr_coupled", "PyTorch AdamW"),
    "optim.decay_mask": ("transformers", "the HF Trainer: no decay on biases and LayerNorms"),
    "optim.warmup": ("2000 steps", OURS),
    "optim.warmup_from": ("zero", "transformers' schedules with warmup"),
    "optim.schedule": ("cosine", "LLaVA's `--lr_scheduler_type cosine`"),
    "optim.grad_clip_norm": (1.0, "the HF Trainer's `max_grad_norm`"),
    "objectives.prefix_lm.normalize": ("per_token", "HF causal LMs: the mean over counted tokens"),
    **at_scale("dots_no_batch", MEASURED),
  },
  variants={
    "tiny": {
      **ON_CPU,
      "optim.lr": (2e-3, "a small model and batch learn in 400 steps at this rate"),
      "optim.weight_decay": (
        0.1,
        "measured on the embedded data before the conventions were named",
      ),
      "optim.warmup": ("50 steps", "an eighth of the 400-step run"),
      "optim.b2": (0.98, TINY_OPTIM),
      "optim.grad_clip_norm": (0.0, TINY_OPTIM),
    },
  },
  notes=(f"Batch and duration: {OURS}.",),
)


def get_config(arg=None):
  variant = arg or "base"
  if variant not in VARIANTS:
    raise ValueError(f"unknown prefixlm_b16 variant {variant!r}; known: {', '.join(VARIANTS)}")
  c = defaults.base_config()
  c.model.update(dict(name="prefix_lm", projector="mlp"))
  if variant != "tiny":
    c.model.update(scan_layers=True, remat="dots_no_batch")  # MEASURED
  c.model.image = ml_collections.ConfigDict(dict(variant="B/16", image_size=224, act="gelu"))
  c.model.text = ml_collections.ConfigDict(
    dict(variant="L", max_len=64, act="gelu")
  )  # 768 wide, 12 layers
  c.objectives = ml_collections.ConfigDict(
    {
      "prefix_lm": dict(weight=1.0, prefix_min=0.0, prefix_max=0.5, normalize="per_token"),
      "vqa": dict(weight=1.0),
    }
  )
  c.optim.update(
    name="adamw",
    lr=3e-4,
    b1=0.9,
    b2=0.999,
    eps=1e-8,
    weight_decay=0.05,
    weight_decay_mode="lr_coupled",
    decay_mask="transformers",
    warmup="2000 steps",
    warmup_from="zero",
    schedule="cosine",
    grad_clip_norm=1.0,
  )
  c.evals = ml_collections.ConfigDict(
    {
      "captioning": dict(every="1 epochs", label_keys=("shape", "color"), limit=500),
      "vqa": dict(every="1 epochs", limit=200, max_answer_len=4),
      "zero_shot_likelihood": dict(
        every="1 epochs", label_keys=("shape", "color"), templates=LIKELIHOOD_TEMPLATES, limit=500
      ),
    }
  )
  if variant == "tiny":
    c.batch_size = 128
    c.data.max_objects = 3
    c.model.image.update(variant="tiny/8", image_size=48)
    c.model.text.update(variant="tiny", max_len=16)
    c.optim.update(lr=2e-3, warmup="50 steps", weight_decay=0.1, b2=0.98, grad_clip_norm=0.0)
    c.train.update(duration="400 steps", log_every="50 steps", checkpoint_every="200 steps")
    for name in c.evals:
      c.evals[name].every = "200 steps"
    c.evals.captioning.limit = 256
    c.evals.vqa.limit = 100
    c.evals.zero_shot_likelihood.limit = 256
  return c.lock()
