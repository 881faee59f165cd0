"""SimVLM-Base: an encoder-decoder PrefixLM over [image; text prefix].

As SimVLM (Wang et al. 2022), Base size: a 12-layer 768-wide bidirectional encoder over image patches
(16x16 at 224px, after a convolutional stem: two 3x3 convolutions here in place of the paper's ResNet
stages) followed by the text prefix, a 12-layer decoder that continues the text, shared word embeddings.
PrefixLM on captions with the split point sampled per example (start token + up to half the caption), plus
text-only PrefixLM batches (the image hidden) mixed in with weight `objectives.text_lm.weight`.
Evaluated by captioning (shape / colour named, BLEU-1..4, ROUGE-L, CIDEr-D) and zero-shot classification
by the likelihood of "a photo of a {label}".

COMMAND:
  python -m vlm_jax.main --config experiments/simvlm_base.py:tiny --workdir runs/simvlm_tiny
"""

import ml_collections

from vlm_jax import defaults

LIKELIHOOD_TEMPLATES = ("a photo of a {}",)


def get_config(arg=None):
  variant = arg or "base"
  if variant not in ("base", "tiny"):
    raise ValueError(f"unknown simvlm_base variant {variant!r}; known: base, tiny")
  c = defaults.base_config()
  c.model.update(dict(name="simvlm", act="gelu", dropout=0.0))
  c.model.image = ml_collections.ConfigDict(dict(variant="B/16", image_size=224, stem=64))
  c.model.text = ml_collections.ConfigDict(dict(max_len=64))
  c.model.encoder = ml_collections.ConfigDict(dict(variant="B"))
  c.model.decoder = ml_collections.ConfigDict(dict(variant="B"))
  c.objectives = ml_collections.ConfigDict(
    {
      "prefix_lm": dict(weight=1.0, prefix_min=0.0, prefix_max=0.5),
      "text_lm": dict(
        name="prefix_lm", weight=0.25, prefix_min=0.0, prefix_max=0.5, text_only=True
      ),
    }
  )
  c.optim.update(lr=5e-4, weight_decay=0.01, b2=0.999, warmup="2000 steps")
  c.evals = ml_collections.ConfigDict(
    {
      "captioning": dict(every="1 epochs", label_keys=("shape", "color"), limit=500),
      "zero_shot_likelihood": dict(
        every="1 epochs", label_keys=("shape", "color"), templates=LIKELIHOOD_TEMPLATES, limit=500
      ),
    }
  )
  if variant == "tiny":
    c.batch_size = 128
    c.model.image.update(variant="tiny/8", image_size=48, stem=16)
    c.model.text.update(max_len=16)
    c.model.encoder.update(variant="tiny", depth=3)
    c.model.decoder.update(variant="tiny", depth=2)
    c.optim.update(lr=2e-3, warmup="50 steps", weight_decay=0.1)
    c.train.update(duration="400 steps", log_every="50 steps", checkpoint_every="200 steps")
    for name in c.evals:
      c.evals[name].every = "200 steps"
      c.evals[name].limit = 256
  return c.lock()
