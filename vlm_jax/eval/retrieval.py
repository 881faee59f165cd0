"""Image-to-text and text-to-image retrieval Recall@K over paired test examples."""

import numpy as np

from vlm_jax.eval import common
from vlm_jax.registry import EVALUATORS


def recall_at_k(scores: np.ndarray, ks=(1, 5, 10)) -> dict:
  """scores[i, j]: query i vs candidate j; the match of query i is candidate i."""
  positive = np.diag(scores)[:, None]
  rank = (scores > positive).sum(axis=1)  # candidates scored strictly above the match
  return {k: float(np.mean(rank < k)) for k in ks}


class Retrieval:
  """config: ks (default 1, 5, 10), limit (examples, optional)."""

  needs = ("encode_image", "encode_text")
  defaults = dict(ks=(1, 5, 10), limit=1000)

  def __init__(self, config, experiment):
    self.exp = experiment
    self.ks = tuple(config.get("ks", (1, 5, 10)))
    self.limit = config.get("limit") or None
    self.text_encoder = common.Encoder(experiment, "encode_text")

  def run(self, params, image_emb):
    """image_emb: the test images' embeddings (the runner computes them once for all evaluators)."""
    source = self.exp.data.test
    n = len(source) if self.limit is None else min(self.limit, len(source))
    captions = [source[i]["caption"] for i in range(n)]
    text_emb = self.text_encoder(params, n, common.text_rows(self.exp, captions))
    scores = image_emb @ text_emb.T
    metrics = {}
    for direction, s in (("i2t", scores), ("t2i", scores.T)):
      for k, value in recall_at_k(s, self.ks).items():
        metrics[f"retrieval/{direction}_r{k}"] = value
    return metrics


EVALUATORS.register("retrieval")(Retrieval)
