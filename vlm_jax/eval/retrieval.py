"""Image-to-text and text-to-image retrieval Recall@K, with one or several captions per image."""

import numpy as np

from vlm_jax.errors import ConfigError
from vlm_jax.eval import common
from vlm_jax.registry import EVALUATORS


def recall_at_k(scores: np.ndarray, ks=(1, 5, 10)) -> dict:
  """scores[i, j]: query i vs candidate j; the match of query i is candidate i."""
  return multi_recall_at_k(scores, np.arange(scores.shape[1]), ks)["i2t"]


def multi_recall_at_k(scores: np.ndarray, text_image: np.ndarray, ks=(1, 5, 10)) -> dict:
  """scores[i, j]: image i vs text j; text j describes image text_image[j]. As the CLIP / ALBEF papers
  count: an image query is a hit at K if any of its texts ranks in the top K; a text query is a hit at K
  if its image does. Ties count for the query (rank = candidates scored strictly above the match).
  -> {'i2t': {k: recall}, 't2i': {k: recall}}."""
  text_image = np.asarray(text_image)
  own = scores[text_image, np.arange(len(text_image))]  # each text's score with its own image
  text_rank = (scores > own[None, :]).sum(axis=0)  # images above each text's image
  # Texts scored above each text by its image, in chunks (COCO: 25,000 texts).
  above = np.concatenate(
    [
      (scores[text_image[c : c + 1024]] > own[c : c + 1024, None]).sum(axis=1)
      for c in range(0, len(text_image), 1024)
    ]
    or [np.zeros(0, np.int64)]
  )
  image_rank = np.full(scores.shape[0], np.iinfo(np.int64).max)
  np.minimum.at(image_rank, text_image, above)  # an image's best-placed text
  return {
    "i2t": {k: float(np.mean(image_rank < k)) for k in ks},
    "t2i": {k: float(np.mean(text_rank < k)) for k in ks},
  }


class Retrieval:
  """config: ks (default 1, 5, 10), limit (images, optional), captions_per_image (1: each example's
  `caption`; N > 1: the first N of its `captions`, as COCO and Flickr30k are evaluated with 5)."""

  needs = ("encode_image", "encode_text")
  defaults = dict(ks=(1, 5, 10), limit=1000)

  def __init__(self, config, experiment):
    self.exp = experiment
    self.ks = tuple(config.get("ks", (1, 5, 10)))
    self.limit = config.get("limit") or None
    self.per_image = int(config.get("captions_per_image", 1))
    self.text_encoder = common.Encoder(experiment, "encode_text")

  def texts(self, n: int):
    """(captions, image index of each caption) of the first n test examples."""
    source = self.exp.data.test
    if self.per_image == 1:
      return [source[i]["caption"] for i in range(n)], np.arange(n)
    texts, owner = [], []
    for i in range(n):
      captions = [common.as_text(c) for c in source[i].get("captions", ())][: self.per_image]
      if len(captions) < self.per_image:
        raise ConfigError(
          f"retrieval with captions_per_image={self.per_image}: test example {i} of "
          f"{self.exp.data.description} has {len(captions)} captions"
        )
      texts += captions
      owner += [i] * len(captions)
    return texts, np.array(owner)

  def run(self, params, image_emb):
    """image_emb: the test images' embeddings (the runner computes them once for all evaluators)."""
    texts, owner = self.texts(len(image_emb))
    text_emb = self.text_encoder(params, len(texts), common.text_rows(self.exp, texts))
    recalls = multi_recall_at_k(image_emb @ text_emb.T, owner, self.ks)
    return {
      f"retrieval/{direction}_r{k}": value
      for direction in ("i2t", "t2i")
      for k, value in recalls[direction].items()
    }


EVALUATORS.register("retrieval")(Retrieval)
