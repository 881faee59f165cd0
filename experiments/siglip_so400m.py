"""SigLIP So400m/14: the SigLIP paper's shape-optimised ViT (1152 wide, 27 layers, MLP 4304, 16 heads; the
image tower of PaliGemma and most open VLMs) at 224 px with a text tower of the same shape over 16 tokens,
a 1152-d embedding (the MAP head's output), as the released So400m/14 (open_clip's
`ViT-SO400M-14-SigLIP.json`); trained as `siglip_b16.py` trains B/16 (big_vision's conventions).

Its layers are scanned and rematerialised (`model.scan_layers`, `model.remat`); the card says why, with the
measurement (docs/benchmarks.md).

Variants (`siglip_so400m.py:VARIANT`):
  (none)  the So400m/14 recipe on the embedded data, batch 64 (a compile check on one host).
  paper   the published batch 32768.

COMMAND:
  python -m vlm_jax.main --mode=compile --topology=v5e:16x16 --config experiments/siglip_so400m.py:paper
"""

import dataclasses
import os

from vlm_jax import config_utils
from vlm_jax.recipe_card import at_scale, load_recipe

HERE = os.path.dirname(os.path.abspath(__file__))
B16 = load_recipe(os.path.join(HERE, "siglip_b16.py"))
VARIANTS = ("base", "paper")
RELEASED = "the released So400m/14 (open_clip `model_configs/ViT-SO400M-14-SigLIP.json`)"
# Measured 2026-12-03 (docs/benchmarks.md, "Per-chip efficiency on TPU pods"): at batch 32768 on
# v5e:16x16, XLA's TPU compiler refuses data:256 with full remat (16.2 GiB of temporaries for a 15.75 GiB
# chip), fsdp:256 likewise (1152 does not divide over 256, so the kernels stay whole) and data:16,fsdp:16
# with dots_no_batch (19.8 GiB); data:16,fsdp:16 with full remat fits in 7.2 GiB a chip.
MEASURED = (
  "v5e:16x16 at batch 32768: data parallelism alone needs 16.2 GiB a chip (XLA refuses it), "
  "data:16,fsdp:16 with full remat 7.2 GiB, with dots_no_batch 19.8 GiB"
)

CARD = dataclasses.replace(
  B16.CARD,
  reference=f"{RELEASED} for the model's shapes; {B16.CARD.reference}",
  settings={
    **B16.CARD.settings,
    "model.image.variant": (
      "So400m/14",
      f"{B16.PAPER}; big_vision `models/vit.py` `decode_variant`",
    ),
    "model.text.variant": ("So400m", RELEASED),
    "model.text.max_len": (16, f"{RELEASED}: `context_length` 16"),
    "model.embed_dim": (1152, f"{RELEASED}: the MAP head's width"),
    **at_scale("full", MEASURED),
    "mesh": ("data:-1,fsdp:16", MEASURED),
  },
  variants={"base": {"batch_size": (64, "one CPU host"), "mesh": ("data:-1", "one host")}},
  notes=B16.CARD.notes,
)


def get_config(arg=None):
  variant = arg or "base"
  if variant not in VARIANTS:
    raise ValueError(f"unknown siglip_so400m variant {variant!r}; known: {', '.join(VARIANTS)}")
  c = config_utils.load_config(os.path.join(HERE, f"siglip_b16.py:{variant}"))
  with c.unlocked():
    c.model.update(embed_dim=1152, scan_layers=True, remat="full")
    c.model.image.variant = "So400m/14"
    c.model.text.update(variant="So400m", max_len=16)
    if variant == "paper":
      c.mesh = "data:-1,fsdp:16"  # MEASURED
  return c.lock()
