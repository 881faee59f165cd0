"""Frozen-LM and staged prefix-LM recipes (LLaVA-style), on the decoder-only prefix-LM of prefixlm_b16.py.

One command runs the stages in order, each in WORKDIR/stage<i>_<name>, each resumable:
  0 lm         the language model alone on captions (text-only PrefixLM); image tower and projector frozen
  1 projector  only the projector, on captions and questions; image tower and LM frozen (a frozen-LM run)
  2 finetune   projector + LM; the image tower stays frozen
Frozen parameters get no optimizer state and stay bit-identical through a stage. The image tower comes
from a CLIP run of the same tower through the run's `init_from` (stage 0 keeps it), e.g. the CLIP tiny run;
without it the tower is a frozen random one.

COMMAND:
  python -m vlm_jax.main --config experiments/clip_b32.py:tiny --workdir runs/clip_tiny
  python -m vlm_jax.main --config experiments/llava_stages.py:tiny --workdir runs/llava_tiny \
      --config.init_from.workdir=runs/clip_tiny
"""

import os

from vlm_jax import config_utils

CAPTIONS_AND_QA = {
  "prefix_lm": dict(weight=1.0, prefix_min=0.0, prefix_max=0.5),
  "vqa": dict(weight=1.0),
}


def get_config(arg=None):
  variant = arg or "base"
  if variant not in ("base", "tiny"):
    raise ValueError(f"unknown llava_stages variant {variant!r}; known: base, tiny")
  c = config_utils.load_config(
    os.path.join(os.path.dirname(__file__), f"prefixlm_b16.py:{variant}")
  )
  steps = {
    "base": ("20000 steps", "5000 steps", "20000 steps"),
    "tiny": ("200 steps", "150 steps", "250 steps"),
  }
  with c.unlocked():
    # The image tower of clip_b32.py's same variant, so that a CLIP run can provide it.
    clip = config_utils.load_config(
      os.path.join(os.path.dirname(__file__), f"clip_b32.py:{variant}")
    )
    c.model.image = clip.model.image
    c.init_from.include = "image_encoder/.*"
    c.stages = [
      dict(
        name="lm",
        trainable="lm_.*",
        overrides={
          "objectives": {
            "text_lm": dict(
              name="prefix_lm", weight=1.0, prefix_min=0.0, prefix_max=0.5, text_only=True
            )
          },
          "evals": {},
          "train.duration": steps[variant][0],
        },
      ),
      dict(
        name="projector",
        trainable="projector/.*",
        init_from="previous",
        overrides={"objectives": CAPTIONS_AND_QA, "train.duration": steps[variant][1]},
      ),
      dict(
        name="finetune",
        trainable="projector/.*|lm_.*",
        init_from="previous",
        overrides={"objectives": CAPTIONS_AND_QA, "train.duration": steps[variant][2]},
      ),
    ]
  return c.lock()
