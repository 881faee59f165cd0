"""Frozen-LM and staged prefix-LM recipes (LLaVA-style), on the decoder-only prefix-LM of prefixlm_b16.py.

One command runs the stages in order, each in WORKDIR/stage<i>_<name>, each resumable:
  0 lm         the language model alone on captions (text-only PrefixLM); image tower and projector frozen
  1 projector  only the projector, on captions and questions; image tower and LM frozen (a frozen-LM run)
  2 finetune   projector + LM; the image tower stays frozen
Frozen parameters get no optimizer state and stay bit-identical through a stage. The image tower comes
from a CLIP run of the same tower through the run's `init_from` (stage 0 keeps it), e.g. the CLIP tiny run;
without it the tower is a frozen random one.

Stages 1 and 2 follow LLaVA-1.5's scripts (the card below): the projector at lr 1e-3, then projector + LM at
2e-5, no weight decay, warmup over 3% of each stage, batch 256 then 128. Stage 0 exists because the LM here
starts from scratch (LLaVA starts from Vicuna). The tiny variant keeps one learning rate for its tiny LM.

COMMAND:
  python -m vlm_jax.main --config experiments/clip_b32.py:tiny --workdir runs/clip_tiny
  python -m vlm_jax.main --config experiments/llava_stages.py:tiny --workdir runs/llava_tiny \
      --config.init_from.workdir=runs/clip_tiny
"""

import os

from vlm_jax import config_utils
from vlm_jax.recipe_card import Card

VARIANTS = ("base", "tiny")
LLAVA = "haotian-liu/LLaVA"
PRE = f"{LLAVA} @ c8f3b6a `scripts/v1_5/pretrain.sh`"
FT = f"{LLAVA} @ 5a5bda8 `scripts/v1_5/finetune.sh`"
HF = "the HF Trainer's defaults (`adam_beta2`, `max_grad_norm`), which LLaVA's scripts keep"
TINY_LR = (
  "the tiny LM is trained from scratch in stage 0; LLaVA's rates assume a 7-13B pretrained LM"
)

CARD = Card(
  reference=f"LLaVA-1.5: {PRE} (stage 1) and {FT} (stage 2), on prefixlm_b16.py's model",
  reference_variant="base",
  settings={
    "optim.b2": (0.999, HF),
    "optim.grad_clip_norm": (1.0, HF),
    "stages[1].trainable": ("projector/.*", f"{PRE} `--tune_mm_mlp_adapter True`"),
    "stages[1].overrides[optim.lr]": (1e-3, f"{PRE} `--learning_rate 1e-3`"),
    "stages[1].overrides[optim.weight_decay]": (0.0, f"{PRE} `--weight_decay 0.`"),
    "stages[1].overrides[optim.warmup]": ("150 steps", f"{PRE} `--warmup_ratio 0.03`"),
    "stages[1].overrides[batch_size]": (256, f"{PRE}: 32 per device x 8 GPUs"),
    "stages[2].trainable": ("projector/.*|lm_.*", f"{FT}: the vision tower stays frozen"),
    "stages[2].overrides[optim.lr]": (2e-5, f"{FT} `--learning_rate 2e-5`"),
    "stages[2].overrides[optim.weight_decay]": (0.0, f"{FT} `--weight_decay 0.`"),
    "stages[2].overrides[optim.warmup]": ("600 steps", f"{FT} `--warmup_ratio 0.03`"),
    "stages[2].overrides[batch_size]": (128, f"{FT}: 16 per device x 8 GPUs"),
  },
  variants={
    "tiny": {
      "stages[1].overrides[optim.lr]": (2e-3, TINY_LR),
      "stages[1].overrides[optim.warmup]": ("5 steps", "3% of the 150-step stage"),
      "stages[1].overrides[batch_size]": (128, "the embedded data on 2 CPU cores"),
      "stages[2].overrides[optim.lr]": (2e-3, TINY_LR),
      "stages[2].overrides[optim.warmup]": ("8 steps", "3% of the 250-step stage"),
      "stages[2].overrides[batch_size]": (128, "the embedded data on 2 CPU cores"),
    },
  },
)

CAPTIONS_AND_QA = {
  "prefix_lm": dict(weight=1.0, prefix_min=0.0, prefix_max=0.5),
  "vqa": dict(weight=1.0),
}


def llava_stage(name, trainable, duration, lr, warmup, batch_size):
  """A stage on captions and questions, from the previous stage, with LLaVA's optimizer settings."""
  return dict(
    name=name,
    trainable=trainable,
    init_from="previous",
    overrides={
      "objectives": CAPTIONS_AND_QA,
      "train.duration": duration,
      "optim.lr": lr,
      "optim.weight_decay": 0.0,
      "optim.warmup": warmup,
      "batch_size": batch_size,
    },
  )


def get_config(arg=None):
  variant = arg or "base"
  if variant not in VARIANTS:
    raise ValueError(f"unknown llava_stages variant {variant!r}; known: {', '.join(VARIANTS)}")
  c = config_utils.load_config(
    os.path.join(os.path.dirname(__file__), f"prefixlm_b16.py:{variant}")
  )
  steps = {
    "base": ("20000 steps", "5000 steps", "20000 steps"),
    "tiny": ("200 steps", "150 steps", "250 steps"),
  }
  # Per stage 1 and 2: (lr, warmup (3% of the stage), batch), LLaVA-1.5's for the base variant.
  stage_optim = {
    "base": ((1e-3, "150 steps", 256), (2e-5, "600 steps", 128)),
    "tiny": ((2e-3, "5 steps", 128), (2e-3, "8 steps", 128)),
  }[variant]
  with c.unlocked():
    # The image tower of clip_b32.py's same variant, so that a CLIP run can provide it.
    clip = config_utils.load_config(
      os.path.join(os.path.dirname(__file__), f"clip_b32.py:{variant}")
    )
    c.model.image = clip.model.image
    # LLaVA's Trainer settings in every variant (prefixlm_b16.py's tiny changes them for its own run).
    c.optim.update(b2=0.999, grad_clip_norm=1.0)
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
      llava_stage("projector", "projector/.*", steps[variant][1], *stage_optim[0]),
      llava_stage("finetune", "projector/.*|lm_.*", steps[variant][2], *stage_optim[1]),
    ]
  return c.lock()
