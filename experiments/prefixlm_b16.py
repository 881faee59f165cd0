"""Decoder-only prefix-LM with a vision projector: ViT-B/16 -> 2-layer MLP projector -> image tokens in
front of the text in a 12-layer 768-wide decoder, with full attention over [image; prefix] and causal
attention over the rest. Trained on captions as PrefixLM (the split point sampled per example: start token
plus up to half the caption) and on question -> answer pairs; evaluated by captioning (shape / colour named,
BLEU, ROUGE-L, CIDEr-D against every reference caption), VQA accuracy per question type, and zero-shot
classification by the likelihood of "a photo of a {label}".

The `tiny` variant trains on the embedded data's 1-3 object variant (`data.max_objects=3`) so that counting
questions mean something. For the frozen-LM and staged (projector first, then LM) recipes see
experiments/llava_stages.py.

COMMAND:
  python -m vlm_jax.main --config experiments/prefixlm_b16.py:tiny --workdir runs/prefixlm_tiny
"""

import ml_collections

from vlm_jax import defaults

LIKELIHOOD_TEMPLATES = ("a photo of a {}",)


def get_config(arg=None):
  variant = arg or "base"
  if variant not in ("base", "tiny"):
    raise ValueError(f"unknown prefixlm_b16 variant {variant!r}; known: base, tiny")
  c = defaults.base_config()
  c.model.update(dict(name="prefix_lm", projector="mlp"))
  c.model.image = ml_collections.ConfigDict(dict(variant="B/16", image_size=224, act="gelu"))
  c.model.text = ml_collections.ConfigDict(
    dict(variant="L", max_len=64, act="gelu")
  )  # 768 wide, 12 layers
  c.objectives = ml_collections.ConfigDict(
    {
      "prefix_lm": dict(weight=1.0, prefix_min=0.0, prefix_max=0.5),
      "vqa": dict(weight=1.0),
    }
  )
  c.optim.update(lr=3e-4, weight_decay=0.05, b2=0.98, warmup="2000 steps")
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
    c.optim.update(lr=2e-3, warmup="50 steps", weight_decay=0.1)
    c.train.update(duration="400 steps", log_every="50 steps", checkpoint_every="200 steps")
    for name in c.evals:
      c.evals[name].every = "200 steps"
    c.evals.captioning.limit = 256
    c.evals.vqa.limit = 100
    c.evals.zero_shot_likelihood.limit = 256
  return c.lock()
