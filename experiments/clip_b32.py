"""CLIP ViT-B/32: image tower ViT-B/32 at 224px, 12-layer 512-wide text tower, 512-d joint embedding.

Optimiser as in OpenAI CLIP / open_clip's B/32 recipe: AdamW lr 5e-4, betas (0.9, 0.98), eps 1e-6,
weight decay 0.2 (matrices only), 2000 warmup steps then cosine decay, 32 epochs, QuickGELU, global
InfoNCE with a learnable temperature initialised at 1/0.07 and capped at 100. The published recipe's
batch is 32768 on 400M pairs (`:paper`); with no dataset configured the run uses the embedded synthetic
dataset, and the default variant uses batch 64 so that it runs on one CPU host (about 20 s a step on
2 cores: `python -m vlm_jax.bench --config experiments/clip_b32.py --steps 3`).

Variants (`clip_b32.py:VARIANT`):
  (none)  the B/32 recipe on the embedded data, batch 64.
  paper   the published batch 32768; for pods with real data.
  tiny    a small CLIP that learns the embedded data on 2 CPU cores in about 3.5 minutes (400 steps,
          shape zero-shot top-1 ~0.89 vs 0.125 chance).

COMMAND:
  python -m vlm_jax.main --config experiments/clip_b32.py:tiny --workdir runs/clip_tiny
  python -m vlm_jax.main --config experiments/clip_b32.py --workdir runs/clip_b32
"""
import ml_collections

ZERO_SHOT_TEMPLATES = ("a photo of a {}.", "a {}.", "a picture of a {}.", "an image of a {}.")


def get_config(arg=None):
  variant = arg or "base"
  if variant not in ("base", "paper", "tiny"):
    raise ValueError(f"unknown clip_b32 variant {variant!r}; known: base, paper, tiny")
  c = ml_collections.ConfigDict()
  c.seed = 0
  c.mesh = "data:-1"          # axes data/fsdp/tensor, e.g. "data:4,fsdp:2"; -1 = the remaining devices
  c.batch_size = {"base": 64, "paper": 32768, "tiny": 128}[variant]
  c.eval_batch_size = 256

  c.model = ml_collections.ConfigDict(dict(
      name="clip", embed_dim=512, dtype="float32", param_dtype="float32", remat="none", scan_layers=False,
      image=dict(variant="B/32", image_size=224, act="quick_gelu"),
      text=dict(variant="B", max_len=77, act="quick_gelu")))
  c.objectives = ml_collections.ConfigDict({"clip": dict(weight=1.0, impl="global")})  # impl: global | local
  # With no dataset configured, the embedded synthetic data (rendered at 64px, resized to the model input).
  # tokenizer_path "" = the dataset's own SentencePiece model.
  c.data = ml_collections.ConfigDict(dict(
      name="embedded", image_size=64, seed=0, data_dir="", tokenizer="sentencepiece", tokenizer_path="",
      num_threads=8, lowercase=False, augment=dict(crop_scale=None, flip=False)))
  c.optim = ml_collections.ConfigDict(dict(
      lr=5e-4, warmup="2000 steps", schedule="cosine", end_lr_factor=0.0, b1=0.9, b2=0.98, eps=1e-6,
      weight_decay=0.2, grad_clip_norm=0.0, frozen="", lr_multipliers=()))
  c.train = ml_collections.ConfigDict(dict(
      duration="32 epochs", log_every="50 steps", checkpoint_every="1000 steps", keep_checkpoints=3,
      async_checkpoints=True, mfu=True))
  c.evals = ml_collections.ConfigDict({
      "zero_shot": dict(every="1 epochs", label_keys=("shape", "color"), templates=ZERO_SHOT_TEMPLATES, limit=0),
      "retrieval": dict(every="1 epochs", ks=(1, 5, 10), limit=1000),
  })
  c.debug = ml_collections.ConfigDict(dict(nan_at_step=-1))

  if variant == "tiny":
    c.model.embed_dim = 128
    c.model.image.update(variant="tiny/8", image_size=48)   # 36 patches: the 64px data, resized
    c.model.text.update(variant="tiny", max_len=16)
    c.data.image_size = 64
    c.optim.update(lr=2e-3, warmup="100 steps", weight_decay=0.1)
    c.train.update(duration="400 steps", log_every="50 steps", checkpoint_every="200 steps")
    c.evals.zero_shot.every = "200 steps"
    c.evals.retrieval.every = "200 steps"
  return c.lock()
