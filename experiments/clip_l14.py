"""CLIP ViT-L/14: OpenAI CLIP's ViT-L/14 at 224 px (a 1024-wide 24-layer image tower with 16 heads, the
768-wide 12-layer text tower, a 768-d joint embedding), trained as `clip_b32.py` trains B/32 (open_clip's
conventions, the numbers of OpenAI CLIP's Tables 19-20) at Table 20's learning rate for ViT-L/14, 4e-4.

Its layers are scanned and rematerialised (`model.scan_layers`, `model.remat`), as big_vision and maxtext
configure their large models; the card says why, with the measurement (docs/benchmarks.md).

Variants (`clip_l14.py:VARIANT`):
  (none)  the L/14 recipe on the embedded data, batch 64 (a compile check on one host; train on pods).
  paper   the published batch 32768.

COMMAND:
  python -m vlm_jax.main --mode=compile --topology=v5e:16x16 --config experiments/clip_l14.py:paper
"""

import dataclasses
import os

from vlm_jax import config_utils
from vlm_jax.recipe_card import at_scale, load_recipe

HERE = os.path.dirname(os.path.abspath(__file__))
B32 = load_recipe(os.path.join(HERE, "clip_b32.py"))
VARIANTS = ("base", "paper")
TABLE_20 = f"{B32.CLIP_PAPER}, Table 20 (ViT-L/14)"
# Measured 2026-12-03 (docs/benchmarks.md, "Per-chip efficiency on TPU pods"): at batch 32768 on
# v5e:16x16 (data:256), XLA's TPU compiler refuses remat none (93.2 GiB of temporaries for a 15.75 GiB chip)
# and dots_no_batch (23.3 GiB); full remat fits in 14.1 GiB a chip, recomputing 22.6% more matmul FLOPs.
MEASURED = (
  "v5e:16x16 at batch 32768 (data:256): remat none needs 93.2 GiB of temporaries a chip, "
  "dots_no_batch 23.3 GiB (XLA refuses both), full fits in 14.1 GiB at 1.226x the model's FLOPs"
)

CARD = dataclasses.replace(
  B32.CARD,
  settings={
    **B32.CARD.settings,
    "model.image.variant": ("L/14", TABLE_20),
    "model.text.variant": ("L", f"{TABLE_20}: a 768-wide 12-layer text tower with 12 heads"),
    "model.embed_dim": (768, TABLE_20),
    "optim.lr": (4e-4, TABLE_20),
    **at_scale("full", MEASURED),
  },
  variants={"base": {"batch_size": (64, "one CPU host")}},
  notes=B32.CARD.notes,
)


def get_config(arg=None):
  variant = arg or "base"
  if variant not in VARIANTS:
    raise ValueError(f"unknown clip_l14 variant {variant!r}; known: {', '.join(VARIANTS)}")
  c = config_utils.load_config(os.path.join(HERE, f"clip_b32.py:{variant}"))
  with c.unlocked():
    c.model.update(embed_dim=768, scan_layers=True, remat="full")
    c.model.image.variant = "L/14"
    c.model.text.variant = "L"
    c.optim.lr = 4e-4
  return c.lock()
