"""CLIP ViT-B/32: image tower ViT-B/32 at 224px, 12-layer 512-wide text tower, 512-d joint embedding.

Trained as open_clip 3.3.0 trains it (the card below, checked by tests/test_recipe_cards.py and, step by
step against open_clip's own code, by tests/test_reference_steps.py): PyTorch AdamW (decay lr * 0.2, never
on biases, norms, the logit scale or 1-d parameters), warmup from lr / 2000 at step 0, cosine decay, the
logit scale clamped to [0, ln 100] after every step, RandomResizedCrop(scale=(0.9, 1.0)) bicubic; the
numbers of OpenAI CLIP's Tables 19-20 (lr 5e-4, betas (0.9, 0.98), eps 1e-6, batch 32768, 32 epochs).
With no dataset configured the run uses the embedded synthetic dataset; the default variant uses batch
64 so that it runs on one CPU host (`python -m vlm_jax.tools.bench --config experiments/clip_b32.py --steps 3`).

Variants (`clip_b32.py:VARIANT`):
  (none)  the B/32 recipe on the embedded data, batch 64.
  paper   the published batch 32768; for pods with real data.
  tiny    a small CLIP that learns the embedded data on 2 CPU cores in about 3 minutes (400 steps).
  small   the CPU speed comparison with open_clip (docs/benchmarks.md): 256-wide 6-layer towers, patch 16
          at 64 px, context 32, CLIP's 49408-token vocabulary, GELU, open_clip's text pooling, batch 64.

COMMAND:
  python -m vlm_jax.main --config experiments/clip_b32.py:tiny --workdir runs/clip_tiny
  python -m vlm_jax.main --config experiments/clip_b32.py --workdir runs/clip_b32
"""

import math

import ml_collections

from vlm_jax import defaults
from vlm_jax.recipe_card import ON_CPU, Card, at_scale

VARIANTS = ("base", "paper", "tiny", "small")
CLIP_PAPER = "OpenAI CLIP paper (Radford et al. 2021)"
OPEN_CLIP = "open_clip 3.3.0 (mlfoundations/open_clip)"
TINY = "the embedded data on 2 CPU cores"
# Measured 2026-12-03, one 400-step run each (python -m vlm_jax.main --config experiments/clip_b32.py:tiny
# --workdir runs/clip_tiny [--config.data.augment.crop_scale="(0.9, 1.0)"]).
CROP_DISTORTS_SHAPES = (
  "the embedded data's labels are shapes, which the crop's aspect jitter (3/4 to 4/3) distorts: "
  "shape zero-shot 0.83 with open_clip's crop, 0.94 without"
)

# Measured 2026-12-04 (docs/benchmarks.md, "Per-chip efficiency on TPU pods"): at batch 32768 on v5e:16x16
# (data:256), scanned layers without remat need 15.69 GiB of a 16 GiB chip (unrolled: 6.50 GiB): a scan
# keeps every layer's activations stacked. dots_no_batch recomputes only what is not a matmul.
MEASURED = (
  "v5e:16x16 at batch 32768 (data:256): scanned without remat needs 15.69 GiB of the 16 GiB chip (no "
  "headroom; unrolled, 6.50 GiB); dots_no_batch fits in 5.71 GiB at 1.005x the model's FLOPs"
)

CARD = Card(
  reference=(
    f"{CLIP_PAPER} Tables 19-20 for the numbers; {OPEN_CLIP} `open_clip_train/main.py`, "
    "`scheduler.py`, `train.py` and `open_clip/transform.py` for how they are applied"
  ),
  reference_variant="paper",
  settings={
    "batch_size": (32768, f"{CLIP_PAPER}, Table 19"),
    "train.duration": ("32 epochs", f"{CLIP_PAPER}, Table 19"),
    "model.image.variant": ("B/32", f"{CLIP_PAPER}, Table 20"),
    "model.image.image_size": (224, f"{CLIP_PAPER}, Table 20"),
    "model.text.max_len": (77, "CLIP's context length"),
    "data.tokenizer": (
      "clip_bpe",
      "OpenAI CLIP's BPE, open_clip's `SimpleTokenizer` (the vocabulary ships in vlm_jax/data/vocab)",
    ),
    "model.text.pad_id": (
      -1,
      "open_clip's causal text tower masks no padding (0 is the token '!')",
    ),
    "model.text.pool": (
      "argmax",
      "open_clip `text_global_pool(pool_type='argmax')`: the end-of-text token",
    ),
    "optim.name": ("adamw", "`torch.optim.AdamW` (open_clip_train/main.py)"),
    "optim.lr": (5e-4, f"{CLIP_PAPER}, Table 20 (ViT-B/32)"),
    "optim.b1": (0.9, f"{CLIP_PAPER}, Table 19"),
    "optim.b2": (0.98, f"{CLIP_PAPER}, Table 19 (ViT)"),
    "optim.eps": (1e-6, f"{CLIP_PAPER}, Table 19 (ViT)"),
    "optim.weight_decay": (0.2, f"{CLIP_PAPER}, Table 19"),
    "optim.weight_decay_mode": ("lr_coupled", "PyTorch AdamW decays `lr * wd * p`"),
    "optim.decay_mask": (
      "open_clip",
      "open_clip_train/main.py: no decay where `p.ndim < 2` or the name has bn/ln/bias/logit_scale",
    ),
    "optim.warmup": ("2000 steps", f"{CLIP_PAPER}, Table 19"),
    "optim.warmup_from": (
      "one_step",
      "open_clip_train/scheduler.py `_warmup_lr`: (step + 1) / warmup",
    ),
    "optim.schedule": ("cosine", "open_clip_train/scheduler.py `cosine_lr`"),
    "optim.end_lr_factor": (0.0, "`cosine_lr` decays to 0"),
    "optim.grad_clip_norm": (0.0, "open_clip_train/params.py: `--grad-clip-norm` defaults to None"),
    "model.logit_scale_init": (math.log(1 / 0.07), f"{CLIP_PAPER}, section 2.5"),
    "model.logit_scale_max": (math.log(100.0), f"{CLIP_PAPER}, Table 19 (max temperature 100)"),
    "model.logit_scale_min": (0.0, "open_clip_train/train.py: `logit_scale.clamp_(0, ln 100)`"),
    "model.logit_scale_clamp": ("parameter", "clamped after every optimizer step (train.py)"),
    "objectives.clip.impl": ("global", "open_clip `ClipLoss`: logits over the gathered batch"),
    "data.augment.crop_scale": ((0.9, 1.0), "open_clip/transform.py `RandomResizedCrop`"),
    "data.augment.crop_ratio": ((3 / 4, 4 / 3), "torchvision's default ratio range"),
    "data.augment.flip": (False, "open_clip/transform.py: no flip"),
    "data.mean": ((0.48145466, 0.4578275, 0.40821073), "OPENAI_DATASET_MEAN"),
    "data.std": ((0.26862954, 0.26130258, 0.27577711), "OPENAI_DATASET_STD"),
    **at_scale("dots_no_batch", MEASURED),
  },
  variants={
    "base": {"batch_size": (64, "one CPU host")},
    "tiny": {
      "batch_size": (128, TINY),
      "train.duration": ("400 steps", TINY),
      "model.image.variant": ("tiny/8", TINY),
      "model.image.image_size": (48, TINY),
      "model.text.max_len": (16, "the embedded captions are short"),
      "data.tokenizer": ("sentencepiece", "the embedded data's own model: every word one piece"),
      "model.text.pad_id": (0, "the SentencePiece model's padding is no token"),
      "model.text.pool": ("eot", "the end-of-text token, found from the padding"),
      "optim.lr": (2e-3, "a small model and batch learn in 400 steps at this rate"),
      "optim.weight_decay": (
        0.1,
        "measured on the embedded data before the conventions were named",
      ),
      "optim.warmup": ("100 steps", "a quarter of the 400-step run"),
      "data.augment.crop_scale": (None, CROP_DISTORTS_SHAPES),
      **ON_CPU,
    },
    "small": {
      "batch_size": (64, "the CPU speed comparison with open_clip"),
      "model.image.variant": ("B/16", "256-wide 6-layer towers, 64 px"),
      "model.image.image_size": (64, "the embedded images"),
      "model.text.max_len": (32, "the speed comparison's context"),
      "model.scan_layers": (False, "as open_clip runs it: the speed comparison's layers unrolled"),
      "model.remat": ("none", "as open_clip runs it: no checkpointing"),
    },
  },
  notes=(
    "The paper's data (400M pairs) is not the embedded data; the recipe's conventions are the same "
    "wherever it runs.",
    "Text padding: with `data.tokenizer=clip_bpe` (whose pad id 0 is the token '!') the text tower "
    "masks nothing and pools at the end-of-text token (`model.text.pad_id=-1`, `pool=argmax`), as "
    "open_clip's; a run that masks id 0 is refused.",
  ),
)


def get_config(arg=None):
  variant = arg or "base"
  if variant not in VARIANTS:
    raise ValueError(f"unknown clip_b32 variant {variant!r}; known: {', '.join(VARIANTS)}")
  c = defaults.base_config()
  c.batch_size = {"base": 64, "paper": 32768, "tiny": 128, "small": 64}[variant]
  c.model.update(
    dict(
      name="clip",
      embed_dim=512,
      logit_scale_init=math.log(1 / 0.07),
      logit_scale_max=math.log(100.0),
      logit_scale_min=0.0,
      logit_scale_clamp="parameter",
    )
  )
  c.model.image = ml_collections.ConfigDict(
    dict(variant="B/32", image_size=224, act="quick_gelu", pool="cls")
  )
  c.model.text = ml_collections.ConfigDict(
    dict(variant="B", max_len=77, act="quick_gelu", causal=True, pool="argmax", pad_id=-1)
  )
  c.data.tokenizer = "clip_bpe"  # no path: the vocabulary shipped with vlm_jax
  c.objectives = ml_collections.ConfigDict(
    {"clip": dict(weight=1.0, impl="global")}
  )  # impl: global | local
  c.optim.update(
    name="adamw",
    lr=5e-4,
    b1=0.9,
    b2=0.98,
    eps=1e-6,
    weight_decay=0.2,
    weight_decay_mode="lr_coupled",
    decay_mask="open_clip",
    warmup="2000 steps",
    warmup_from="one_step",
    schedule="cosine",
    end_lr_factor=0.0,
    grad_clip_norm=0.0,
  )
  c.data.augment.update(crop_scale=(0.9, 1.0), crop_ratio=(3 / 4, 4 / 3), flip=False)
  c.train.duration = "32 epochs"
  if variant in ("base", "paper"):
    c.model.update(scan_layers=True, remat="dots_no_batch")  # MEASURED

  if variant == "small":
    c.model.embed_dim = 256
    tower = dict(width=256, depth=6, num_heads=4, mlp_dim=1024, act="gelu")
    c.model.image.update(variant="B/16", image_size=64, **tower)
    # As open_clip's text tower: no padding mask (causal), pooled at the largest id (CLIP BPE's
    # end-of-text), so that the same token ids give the same embedding ("!" is id 0 in CLIP's BPE).
    c.model.text.update(variant="B", max_len=32, vocab_size=49408, **tower)
  if variant == "tiny":
    c.model.embed_dim = 128
    c.model.image.update(variant="tiny/8", image_size=48)  # 36 patches: the 64px data, resized
    c.model.text.update(variant="tiny", max_len=16, pad_id=0, pool="eot")
    c.data.tokenizer = "sentencepiece"
    c.optim.update(lr=2e-3, warmup="100 steps", weight_decay=0.1)
    c.data.augment.crop_scale = None  # CROP_DISTORTS_SHAPES
    c.train.update(duration="400 steps", log_every="50 steps", checkpoint_every="200 steps")
    c.evals.zero_shot.every = "200 steps"
    c.evals.retrieval.every = "200 steps"
    # Its evaluators read the embedded data whatever the run trains on (e.g. the same images written as tar
    # shards by `python -m vlm_jax.tools.write_shards`), so that --config.data.name=shards needs nothing else.
    for evaluator in c.evals.values():
      evaluator.data = ml_collections.ConfigDict(dict(name="embedded"))
  return c.lock()
