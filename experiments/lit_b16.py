"""LiT (locked-image tuning) ViT-B/16: a pretrained image tower, locked; a text tower trained from scratch.

The image tower and its projection come from `init_from.workdir`: any vlm_jax run (CLIP, SigLIP) or a
converted public checkpoint (`python -m vlm_jax.convert ...`). Locked means fixed: run in eval mode (no
dropout), no gradient, no optimizer update and no optimizer state. The loss is the contrastive one of the
source model (CLIP softmax by default; `--config.objectives` can switch to sigmoid). Any other parameter
group can be frozen with `optim.frozen` (a regex over parameter paths).

Variants:
  (none)  B/16 image tower, B text tower, batch 64 (as clip_b32's base variant); set init_from.workdir.
  tiny    the shape of clip_b32.py:tiny; init from a clip_b32.py:tiny run.

COMMAND:
  python -m vlm_jax.main --config experiments/clip_b32.py:tiny --workdir runs/clip_tiny
  python -m vlm_jax.main --config experiments/lit_b16.py:tiny --workdir runs/lit_tiny \\
      --config.init_from.workdir=runs/clip_tiny
"""

import os

from vlm_jax import config_utils


def get_config(arg=None):
  variant = arg or "base"
  if variant not in ("base", "tiny"):
    raise ValueError(f"unknown lit_b16 variant {variant!r}; known: base, tiny")
  c = config_utils.load_config(os.path.join(os.path.dirname(__file__), f"clip_b32.py:{variant}"))
  with c.unlocked():
    c.model.locked = ("image",)
    if variant == "base":
      c.model.image.variant = "B/16"
    # workdir: a run or converted model; step -1: its latest checkpoint; include: the parameter paths to
    # load (here the image tower and its projection, everything named image_*).
    c.init_from.include = "image_.*"
  return c.lock()
