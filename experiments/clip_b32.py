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
  tiny    a small CLIP that learns the embedded data on 2 CPU cores in about 3 minutes (400 steps,
          shape zero-shot top-1 ~0.94 vs 0.125 chance).
  small   the CPU speed comparison with open_clip (docs/scaling.md): 256-wide 6-layer towers, patch 16
          at 64 px, context 32, CLIP's 49408-token vocabulary, GELU, batch 64.

COMMAND:
  python -m vlm_jax.main --config experiments/clip_b32.py:tiny --workdir runs/clip_tiny
  python -m vlm_jax.main --config experiments/clip_b32.py --workdir runs/clip_b32
"""

import ml_collections

from vlm_jax import defaults


def get_config(arg=None):
  variant = arg or "base"
  if variant not in ("base", "paper", "tiny", "small"):
    raise ValueError(f"unknown clip_b32 variant {variant!r}; known: base, paper, tiny, small")
  c = defaults.base_config()
  c.batch_size = {"base": 64, "paper": 32768, "tiny": 128, "small": 64}[variant]
  c.model.update(dict(name="clip", embed_dim=512))
  c.model.image = ml_collections.ConfigDict(
    dict(variant="B/32", image_size=224, act="quick_gelu", pool="cls")
  )
  c.model.text = ml_collections.ConfigDict(
    dict(variant="B", max_len=77, act="quick_gelu", causal=True, pool="eot")
  )
  c.objectives = ml_collections.ConfigDict(
    {"clip": dict(weight=1.0, impl="global")}
  )  # impl: global | local

  if variant == "small":
    c.model.embed_dim = 256
    tower = dict(width=256, depth=6, num_heads=4, mlp_dim=1024, act="gelu")
    c.model.image.update(variant="B/16", image_size=64, **tower)
    c.model.text.update(variant="B", max_len=32, vocab_size=49408, **tower)
  if variant == "tiny":
    c.model.embed_dim = 128
    c.model.image.update(variant="tiny/8", image_size=48)  # 36 patches: the 64px data, resized
    c.model.text.update(variant="tiny", max_len=16)
    c.optim.update(lr=2e-3, warmup="100 steps", weight_decay=0.1)
    c.train.update(duration="400 steps", log_every="50 steps", checkpoint_every="200 steps")
    c.evals.zero_shot.every = "200 steps"
    c.evals.retrieval.every = "200 steps"
    # Its evaluators read the embedded data whatever the run trains on (e.g. the same images written as tar
    # shards by `python -m vlm_jax.data.write_shards`), so that --config.data.name=shards needs nothing else.
    for evaluator in c.evals.values():
      evaluator.data = ml_collections.ConfigDict(dict(name="embedded"))
  return c.lock()
