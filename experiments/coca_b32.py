"""CoCa ViT-B/32: contrastive + captioning with one image encoder, a text tower and a multimodal decoder.

open_clip's coca_ViT-B-32 (vlm_jax/models/coca.py): a B/32 image tower whose tokens one attentional pooler
of 256 queries reads (the first query's output is the contrastive embedding, the other 255 feed the
decoder), a 12-layer causal text tower with a class embedding appended after the caption (its output is the
text embedding), and a 12-layer multimodal decoder (self-attention, then cross-attention to the image, per
layer). Loss = 1 x CLIP + 2 x caption cross-entropy (padding ignored), trained with open_clip_train's
conventions (the card below; tests/test_reference_steps.py trains it beside open_clip's own CoCa).
Evaluated by zero-shot, retrieval and greedy captions that must name the image's shape and colour.

Variants (`coca_b32.py:VARIANT`):
  (none)  open_clip's coca_ViT-B-32 on the embedded data, batch 64 (one CPU host).
  paper   CoCa-Base at the CoCa paper's batch 65536, 288 px, 500k steps (for pods, with real data).
  tiny    the embedded data on 2 CPU cores.

COMMAND:
  python -m vlm_jax.main --config experiments/coca_b32.py:tiny --workdir runs/coca_tiny
  python -m vlm_jax.main --mode=compile --topology=v5e:16x16 --config experiments/coca_b32.py:paper
"""

import os

import ml_collections

from vlm_jax import config_utils
from vlm_jax.recipe_card import ON_CPU, Card, at_scale

VARIANTS = ("base", "paper", "tiny")
OPEN_CLIP = "open_clip 3.3.0 (mlfoundations/open_clip)"
COCA = "CoCa paper (Yu et al. 2022, arXiv:2205.01917)"
COCA_BASE = f"{COCA}, Table 1: CoCa-Base"
# Measured 2026-12-04 (docs/benchmarks.md, "Per-chip efficiency on TPU pods").
MEASURED = (
  "v5e:16x16 at batch 65536: on data:256, remat none needs 116.3 GiB of temporaries a chip and "
  "dots_no_batch 31.0 GiB (XLA refuses both), full 16.3 GiB (over the chip's 16: every chip holds "
  "4.8 GiB of parameters and Adam moments); on data:16,fsdp:16 full fits in 11.4 GiB at "
  "1.230x the model's FLOPs"
)
TINY = "the embedded data on 2 CPU cores"

CARD = Card(
  reference=(
    f"{OPEN_CLIP}: `open_clip/coca_model.py` and `model_configs/coca_ViT-B-32.json` (the model), "
    "`open_clip/loss.py` `CoCaLoss`, and open_clip_train's `main.py`, `params.py`, `scheduler.py` and "
    "`train.py` (the training)"
  ),
  reference_variant="base",
  settings={
    "model.caption_queries": (
      256,
      "coca_ViT-B-32.json `attn_pooler_queries` (open_clip's default)",
    ),
    "model.pool_heads": (8, "coca_ViT-B-32.json `attn_pooler_heads`"),
    "model.text.depth": (12, "coca_ViT-B-32.json `text_cfg.layers`"),
    "model.text.max_len": (76, "coca_ViT-B-32.json `context_length`"),
    "model.decoder.depth": (12, "coca_ViT-B-32.json `multimodal_cfg.layers`"),
    "model.image.act": ("gelu", "coca_ViT-B-32.json: no `quick_gelu`"),
    "data.tokenizer": (
      "clip_bpe",
      "open_clip's default tokenizer (CLIP's BPE, shipped with vlm_jax)",
    ),
    "model.text.pad_id": (
      0,
      "coca_model.py / transformer.py `_build_additive_mask`: `text != pad_id` (0, also '!')",
    ),
    "optim.name": ("adamw", "`torch.optim.AdamW` (open_clip_train/main.py)"),
    "optim.lr": (5e-4, "open_clip_train/params.py `get_default_params` (ViT)"),
    "optim.b1": (0.9, "`get_default_params`"),
    "optim.b2": (0.98, "`get_default_params`"),
    "optim.eps": (1e-6, "`get_default_params`"),
    "optim.weight_decay": (0.2, "params.py `--wd`"),
    "optim.weight_decay_mode": ("lr_coupled", "PyTorch AdamW decays `lr * wd * p`"),
    "optim.decay_mask": ("open_clip", "open_clip_train/main.py `exclude`"),
    "optim.warmup": ("10000 steps", "params.py `--warmup`"),
    "optim.warmup_from": ("one_step", "open_clip_train/scheduler.py `_warmup_lr`"),
    "optim.schedule": ("cosine", "scheduler.py `cosine_lr`"),
    "optim.end_lr_factor": (0.0, "`cosine_lr` decays to 0"),
    "optim.grad_clip_norm": (0.0, "params.py `--grad-clip-norm` defaults to None"),
    "model.logit_scale_clamp": ("parameter", "open_clip_train/train.py clamps after each step"),
    "model.logit_scale_min": (0.0, "`logit_scale.clamp_(0, ln 100)`"),
    "objectives.coca.contrastive_weight": (1.0, "params.py `--coca-contrastive-loss-weight`"),
    "objectives.coca.caption_weight": (2.0, "params.py `--coca-caption-loss-weight`"),
    "objectives.coca.normalize": ("per_token", "`CoCaLoss`: CrossEntropyLoss(ignore_index=pad)"),
    "data.augment.crop_scale": ((0.9, 1.0), "open_clip/transform.py `RandomResizedCrop`"),
    **at_scale(
      "dots_no_batch", "as clip_b32.py's (open_clip fixes no batch for this model to measure at)"
    ),
  },
  variants={
    "paper": {
      "batch_size": (65536, f"{COCA}, section 4.1"),
      "train.duration": ("500000 steps", f"{COCA}, section 4.1"),
      "model.image.variant": (
        "B/18",
        f"{COCA_BASE} (12 layers, 768 wide, MLP 3072, 12 heads), 18x18 patches",
      ),
      "model.image.image_size": (288, f"{COCA}, section 4.1: pretraining at 288x288"),
      "model.embed_dim": (768, f"{COCA_BASE}: 768-wide"),
      "model.text.variant": (
        "L",
        f"{COCA_BASE}: a 12-layer 768-wide unimodal text decoder, 12 heads",
      ),
      "model.decoder.depth": (12, f"{COCA_BASE}: 12 multimodal decoder layers"),
      "model.decoder.num_heads": (12, COCA_BASE),
      "model.decoder.mlp_dim": (3072, COCA_BASE),
      "model.remat": ("full", MEASURED),
      "mesh": ("data:-1,fsdp:16", MEASURED),
    },
    "tiny": {
      **ON_CPU,
      "model.caption_queries": (16, TINY),
      "model.pool_heads": (4, TINY),
      "model.text.depth": (2, TINY),
      "model.text.max_len": (16, "the embedded captions are short"),
      "data.tokenizer": ("sentencepiece", "the embedded data's own model, as CLIP tiny"),
      "model.decoder.depth": (2, TINY),
      "optim.lr": (2e-3, "as CLIP tiny"),
      "optim.weight_decay": (0.1, "as CLIP tiny"),
      "optim.warmup": ("100 steps", "a quarter of the 400-step run"),
      "data.augment.crop_scale": (None, "as CLIP tiny: the crop distorts the embedded shapes"),
    },
  },
  notes=(
    "open_clip does not fix a batch size or duration for CoCa (they are per-run flags); the base "
    "variant keeps clip_b32's (batch 64 on one CPU host, 32 epochs).",
    "`:paper` takes the CoCa paper's model size, batch, resolution and length and keeps open_clip's "
    "model and training otherwise: one attentional pooler of 256 queries whose first output is the "
    "contrastive embedding (the paper has a second, 1-query pooler), CLIP's BPE over 76 tokens (the "
    "paper trains a 64k SentencePiece model on its data), AdamW as above (the paper trains with "
    "Adafactor, decoupled weight decay, a linear decay: not reproduced here).",
  ),
)


def get_config(arg=None):
  variant = arg or "base"
  if variant not in VARIANTS:
    raise ValueError(f"unknown coca_b32 variant {variant!r}; known: {', '.join(VARIANTS)}")
  c = config_utils.load_config(os.path.join(os.path.dirname(__file__), f"clip_b32.py:{variant}"))
  with c.unlocked():
    c.model.name = "coca"
    c.model.update(caption_queries=256, pool_heads=8)
    # open_clip's coca_ViT-B-32.json: GELU (not QuickGELU), a 12-layer text tower of context 76.
    c.model.image.act = "gelu"
    c.model.text.update(depth=12, max_len=76, act="gelu")
    # open_clip's CoCa masks its pad id 0 in the text tower (`_build_additive_mask`), which in CLIP's BPE
    # is also '!'; its caption loss ignores id 0 too (`CoCaLoss`, ignore_index=pad_id).
    c.model.text.update(pad_id=0, pool="eot")
    c.model.decoder = ml_collections.ConfigDict(dict(depth=12, num_heads=8, mlp_dim=2048))
    c.objectives = {
      "coca": dict(
        weight=1.0,
        contrastive_weight=1.0,
        caption_weight=2.0,
        impl="global",
        normalize="per_token",
      )
    }
    c.optim.warmup = "100 steps" if variant == "tiny" else "10000 steps"
    c.evals.captioning = dict(
      every=c.evals.zero_shot.every, label_keys=("shape", "color"), limit=256
    )
    if variant == "paper":  # CoCa-Base
      c.update(batch_size=65536)
      c.train.duration = "500000 steps"
      c.model.embed_dim = 768
      c.model.image.update(variant="B/18", image_size=288)
      c.model.text.variant = "L"
      c.model.decoder.update(num_heads=12, mlp_dim=3072)
      c.model.remat = "full"  # MEASURED
      c.mesh = "data:-1,fsdp:16"  # MEASURED
    if variant == "tiny":
      c.model.update(caption_queries=16, pool_heads=4)
      c.model.text.update(depth=2, max_len=16)
      c.model.decoder.update(depth=2, num_heads=4, mlp_dim=512)
  return c.lock()
