"""FLAVA ViT-B/16: image, text and multimodal encoders trained with global contrastive, masked image
modeling, masked language modeling, masked multimodal modeling and image-text matching (hard negatives
from the contrastive scores), each switchable and weighted in `objectives`.

As FLAVA (Singh et al. 2022): B/16 image and 768-wide text encoders, a 6-layer multimodal encoder,
768-d contrastive embeddings. MIM targets: normalised pixels (`target="pixel"`, default) or visual tokens
from a k-means patch codebook (`target="codebook"`, with `model.mim_codes` = its size); no pretrained
dVAE can be downloaded here. Fit a codebook with:
  python -m vlm_jax.data.codebook --config experiments/flava_b16.py:tiny --size 256 --output runs/codebook.npy

COMMAND:
  python -m vlm_jax.main --config experiments/flava_b16.py:tiny --workdir runs/flava_tiny
"""

import ml_collections

from vlm_jax import defaults


def get_config(arg=None):
  variant = arg or "base"
  if variant not in ("base", "tiny"):
    raise ValueError(f"unknown flava_b16 variant {variant!r}; known: base, tiny")
  c = defaults.base_config()
  c.model.update(dict(name="flava", embed_dim=768, mim_codes=0))
  c.model.image = ml_collections.ConfigDict(dict(variant="B/16", image_size=224, act="gelu"))
  c.model.text = ml_collections.ConfigDict(
    dict(variant="L", max_len=40, act="gelu")
  )  # 768 wide, 12 layers
  c.model.multimodal = ml_collections.ConfigDict(dict(variant="B", depth=6))
  mim = dict(target="pixel", codebook_path="")
  c.objectives = ml_collections.ConfigDict(
    {
      "clip": dict(weight=1.0, impl="global"),
      "mim": dict(weight=1.0, rate=0.4, **mim),
      "mlm": dict(weight=1.0, rate=0.15, whole_word=True, method="text_mlm_logits"),
      "mmm": dict(weight=1.0, rate=0.15, whole_word=True, image_rate=0.4, **mim),
      "itm": dict(weight=1.0, negative_rate=0.5, negatives="hard"),
    }
  )
  c.optim.update(lr=5e-4, weight_decay=0.1, b2=0.999, eps=1e-8, warmup="2000 steps")
  # ITM re-ranks each query's 16 best contrastive candidates (FLAVA's protocol); rerank_k=0 scores all pairs.
  c.evals.update(
    dict(
      itm_retrieval=dict(every="1 epochs", limit=1000, rerank_k=16),
      mlm_accuracy=dict(every="1 epochs", limit=500, method="text_mlm_logits"),
    )
  )
  if variant == "tiny":
    c.batch_size = 128
    c.model.embed_dim = 128
    c.model.image.update(variant="tiny/8", image_size=48)
    c.model.text.update(variant="tiny", max_len=16)
    c.model.multimodal.update(variant="tiny", depth=2)
    c.optim.update(lr=2e-3, warmup="50 steps")
    c.train.update(duration="400 steps", log_every="50 steps", checkpoint_every="200 steps")
    for name in ("zero_shot", "retrieval", "itm_retrieval", "mlm_accuracy"):
      c.evals[name].every = "200 steps"
    c.evals.itm_retrieval.update(limit=64, rerank_k=0)
    # The embedded captions often leave out an attribute (size, position), so the image that scores best
    # against a caption is often a true match, and ITM has four other losses to compete with. Measured
    # (README): with hard or mixed negatives at weight 1, FLAVA tiny's ITM stays at chance for 400 steps;
    # with random negatives at weight 4 it leaves chance before step 200.
    c.objectives.itm.update(negatives="random", weight=4.0)
  return c.lock()
