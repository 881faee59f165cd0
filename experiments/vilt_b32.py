"""ViLT-B/32: one transformer over image patches and words, trained with masked language modeling and
image-text matching (ITM) with hard negatives.

As ViLT (Kim et al. 2021) and HF `ViltModel`: a ViT-B/32-sized encoder (768 wide, 12 layers), BERT-style
text embeddings, modality-type embeddings, LayerNorm eps 1e-12, a tanh pooler; MLM (15%, 80/10/10,
whole words) + ITM (half of the pairs get another image of the batch). Negatives: `random`, `hard`
(the most similar non-matching image by the model's unimodal encodings) or `mixed`.
AdamW lr 1e-4, weight decay 0.01, as the paper.

COMMAND:
  python -m vlm_jax.main --config experiments/vilt_b32.py:tiny --workdir runs/vilt_tiny
"""

import ml_collections

from vlm_jax import defaults


def get_config(arg=None):
  variant = arg or "base"
  if variant not in ("base", "tiny"):
    raise ValueError(f"unknown vilt_b32 variant {variant!r}; known: base, tiny")
  c = defaults.base_config()
  c.batch_size = 64
  c.model.update(dict(name="vilt", ln_eps=1e-12, dropout=0.0))
  c.model.image = ml_collections.ConfigDict(dict(variant="B/32", image_size=224, act="gelu"))
  c.model.text = ml_collections.ConfigDict(dict(max_len=40, pad_id=0))
  c.objectives = ml_collections.ConfigDict(
    {
      "mlm": dict(weight=1.0, rate=0.15, whole_word=True),
      "itm": dict(weight=1.0, negative_rate=0.5, negatives="mixed", hard_fraction=0.5),
    }
  )
  c.optim.update(lr=1e-4, weight_decay=0.01, b2=0.999, eps=1e-8, warmup="2000 steps")
  c.evals = ml_collections.ConfigDict(
    {
      "itm_retrieval": dict(every="1 epochs", limit=100),
      "mlm_accuracy": dict(every="1 epochs", limit=500),
    }
  )
  if variant == "tiny":
    c.batch_size = 128
    c.model.image.update(variant="tiny/8", image_size=48)
    c.model.text.max_len = 16
    c.optim.update(lr=1e-3, warmup="50 steps")
    c.train.update(duration="400 steps", log_every="50 steps", checkpoint_every="200 steps")
    c.evals.itm_retrieval.update(every="200 steps", limit=64)
    c.evals.mlm_accuracy.update(every="200 steps", limit=500)
  return c.lock()
