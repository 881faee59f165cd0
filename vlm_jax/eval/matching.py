"""Evaluators for fusion models: ITM-scored retrieval and masked-token accuracy on held-out captions."""

import jax
import numpy as np

from vlm_jax.errors import ConfigError
from vlm_jax.eval import common
from vlm_jax.eval.retrieval import recall_at_k
from vlm_jax.objectives.matching import text_masking
from vlm_jax.registry import EVALUATORS


class _TestInputs:
  """The first n preprocessed test images and captions, made on first use and kept: evaluations repeat."""

  def __init__(self, experiment):
    self.exp, self._cache = experiment, {}

  def __call__(self, n):
    if n not in self._cache:
      source = self.exp.data.test
      images = common.image_rows(self.exp, source)(np.arange(n))
      texts = np.stack([self.exp.eval_preprocess.text(source[i]["caption"]) for i in range(n)])
      self._cache[n] = images, texts
    return self._cache[n]


def rerank(contrastive: np.ndarray, k: int, itm_score) -> dict:
  """{'i2t': [image, text], 't2i': [text, image]} ranking scores: the ITM scores of each query's top-k
  candidates by `contrastive` ([image, text]), -inf for every other candidate.

  itm_score(image_index, text_index) -> scores of those pairs (one call per direction).
  """
  n = contrastive.shape[0]
  k = min(k, contrastive.shape[1])
  ranked = {}
  for direction, s in (("i2t", contrastive), ("t2i", contrastive.T)):
    top = np.argsort(-s, axis=1, kind="stable")[:, :k].reshape(-1)
    queries = np.repeat(np.arange(n), k)
    final = np.full(s.shape, -np.inf, np.float32)
    final[queries, top] = itm_score(*((queries, top) if direction == "i2t" else (top, queries)))
    ranked[direction] = final
  return ranked


class ItmRetrieval:
  """Retrieval scored by the ITM head on the first `limit` test examples.

  config: limit (default 100), ks, rerank_k (default 0). With rerank_k = 0 every (image, text) pair is
  scored (limit^2 passes). With rerank_k = K and a model that also has contrastive encoders (FLAVA), each
  query's top-K candidates by contrastive score are re-scored by ITM and ranked first; the others count as
  missed (ALBEF/FLAVA's protocol). The ITM score is logit(match) - logit(no match). Also reports
  `itm/pair_auc` on all pairs: how often a matching pair outscores a non-matching one (chance 0.5). Captions
  in the embedded data can repeat, so a few off-diagonal pairs are true matches; both metrics count them as
  non-matching, which only lowers them.
  """

  needs = ("itm_logits",)
  defaults = dict(limit=100, rerank_k=16)
  needs_image_emb = False

  def __init__(self, config, experiment):
    model = experiment.model
    if not hasattr(model, "itm_logits"):
      raise ConfigError(
        f"itm_retrieval needs a model with an ITM head; {experiment.config.model.name!r} has none"
      )
    self.exp, self.inputs = experiment, _TestInputs(experiment)
    self.limit = config.get("limit") or 100
    self.ks = tuple(config.get("ks", (1, 5, 10)))
    self.rerank_k = int(config.get("rerank_k", 0))
    if self.rerank_k and not hasattr(model, "encode_image"):
      raise ConfigError(
        f"itm_retrieval.rerank_k needs contrastive encoders; {experiment.config.model.name!r} has "
        "none (use rerank_k=0 to score all pairs)"
      )

    def match_score(params, pairs):
      logits = model.apply({"params": params}, pairs["image"], pairs["text"], method="itm_logits")
      return logits[:, 1] - logits[:, 0]

    self.scorer = common.Encoder(experiment, match_score)
    if self.rerank_k:
      self.image_encoder = common.Encoder(experiment, "encode_image")
      self.text_encoder = common.Encoder(experiment, "encode_text")

  def _score(self, params, images, texts, image_index, text_index):
    rows = lambda idx: {"image": images[image_index[idx]], "text": texts[text_index[idx]]}
    return self.scorer(params, len(image_index), rows)

  def run(self, params, image_emb=None):
    del image_emb
    n = min(self.limit, len(self.exp.data.test))
    images, texts = self.inputs(n)
    grid_i, grid_t = np.divmod(np.arange(n * n), n)
    scores = (
      self._score(params, images, texts, grid_i, grid_t).reshape(n, n)
      if not self.rerank_k
      else None
    )
    metrics = {}
    if scores is not None:
      match = np.eye(n, dtype=bool)
      positive, negative = scores[match][:, None], scores[~match][None, :]
      metrics["itm/pair_auc"] = float(
        (positive > negative).mean() + 0.5 * (positive == negative).mean()
      )
      ranked = {"i2t": scores, "t2i": scores.T}
    else:
      contrastive = (
        self.image_encoder(params, n, lambda idx: images[idx])
        @ self.text_encoder(params, n, lambda idx: texts[idx]).T
      )
      ranked = rerank(
        contrastive,
        self.rerank_k,
        lambda image_index, text_index: self._score(params, images, texts, image_index, text_index),
      )
    for direction, s in ranked.items():
      for k, value in recall_at_k(s, self.ks).items():
        metrics[f"itm_retrieval/{direction}_r{k}"] = value
    return metrics


class MlmAccuracy:
  """Masked-token accuracy on held-out captions, masked as in training with a fixed key.

  config: limit (captions, default 500), rate (0.15), whole_word (True), method ('mlm_logits').
  """

  needs = ("mlm_logits",)
  defaults = dict(limit=500)
  needs_image_emb = False

  def __init__(self, config, experiment):
    self.method = config.get("method", "mlm_logits")
    if not hasattr(experiment.model, self.method):
      raise ConfigError(
        f"mlm_accuracy needs the model method {self.method!r}; {experiment.config.model.name!r} "
        "has none"
      )
    # Masked exactly as the mlm objective masks (same rate, whole words, special ids), with a fixed key.
    self.request, self.fields, self.prepare = text_masking(
      config, experiment.tokenizer, experiment.max_len
    )
    self.exp, self.inputs, self.limit = (
      experiment,
      _TestInputs(experiment),
      config.get("limit") or 500,
    )
    model, method = experiment.model, self.method
    self.predict = common.Encoder(
      experiment,
      lambda params, batch: model.apply(
        {"params": params}, batch["image"], batch["text"], method=method
      ).argmax(-1),
    )

  def run(self, params, image_emb=None):
    del image_emb
    n = min(self.limit, len(self.exp.data.test))
    images, texts = self.inputs(n)
    batch = {"text": texts}
    if self.prepare is not None:
      batch.update(
        {
          k: np.stack(
            [self.prepare(None, {"text": t}, self.exp.eval_preprocess, None)[k] for t in texts]
          )
          for k in self.fields
        }
      )
    drawn = jax.jit(self.request.draw)(jax.random.PRNGKey(0), batch)
    masked, selected = np.asarray(drawn.tokens), np.asarray(drawn.selected)
    predicted = self.predict(params, n, lambda idx: {"image": images[idx], "text": masked[idx]})
    return {
      "mlm/accuracy": float((predicted == texts)[selected].mean()) if selected.any() else 0.0,
      "mlm/masked_tokens": float(selected.sum()),
    }


EVALUATORS.register("itm_retrieval")(ItmRetrieval)
EVALUATORS.register("mlm_accuracy")(MlmAccuracy)
