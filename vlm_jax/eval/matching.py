"""Evaluators for fusion models: ITM-scored retrieval and masked-token accuracy on held-out captions."""
import jax
import numpy as np

from vlm_jax.data import masking
from vlm_jax.eval import common
from vlm_jax.eval.retrieval import recall_at_k
from vlm_jax.registry import EVALUATORS, ConfigError


def _test_inputs(experiment, n):
  source = experiment.data.test
  images = common.image_rows(experiment, source)(np.arange(n))
  texts = np.stack([experiment.eval_preprocess.text(source[i]["caption"]) for i in range(n)])
  return images, texts


class ItmRetrieval:
  """Retrieval scored by the ITM head over all (image, text) pairs of the first `limit` test examples.

  config: limit (default 100: limit^2 forward passes), ks. The score is logit(match) - logit(no match).
  Also reports `itm/pair_auc`: how often a matching pair outscores a non-matching one (chance 0.5). Captions in
  the embedded data can repeat, so a few off-diagonal pairs are true matches; both metrics count them
  as non-matching, which only lowers them.
  """
  needs_image_emb = False

  def __init__(self, config, experiment):
    if not hasattr(experiment.model, "itm_logits"):
      raise ConfigError(f"itm_retrieval needs a model with an ITM head; {experiment.config.model.name!r} has none")
    self.exp = experiment
    self.limit = config.get("limit") or 100
    self.ks = tuple(config.get("ks", (1, 5, 10)))
    model = experiment.model

    def match_score(params, pairs):
      logits = model.apply({"params": params}, pairs["image"], pairs["text"], method="itm_logits")
      return logits[:, 1] - logits[:, 0]

    self.scorer = common.Encoder(experiment, match_score)

  def run(self, params, image_emb=None):
    del image_emb
    n = min(self.limit, len(self.exp.data.test))
    images, texts = _test_inputs(self.exp, n)
    rows = lambda idx: {"image": images[idx // n], "text": texts[idx % n]}
    scores = self.scorer(params, n * n, rows).reshape(n, n)   # [image, text]
    # How well matching pairs rank above non-matching ones (ROC AUC over all pairs, ties half): chance 0.5.
    match = np.eye(n, dtype=bool)
    positive, negative = scores[match][:, None], scores[~match][None, :]
    auc = (positive > negative).mean() + 0.5 * (positive == negative).mean()
    metrics = {"itm/pair_auc": float(auc)}
    for direction, s in (("i2t", scores), ("t2i", scores.T)):
      for k, value in recall_at_k(s, self.ks).items():
        metrics[f"itm_retrieval/{direction}_r{k}"] = value
    return metrics


class MlmAccuracy:
  """Masked-token accuracy on held-out captions, masked as in training with a fixed key.

  config: limit (captions, default 500), rate (0.15), whole_word (True), method ('mlm_logits').
  """
  needs_image_emb = False

  def __init__(self, config, experiment):
    self.method = config.get("method", "mlm_logits")
    if not hasattr(experiment.model, self.method):
      raise ConfigError(f"mlm_accuracy needs the model method {self.method!r}; {experiment.config.model.name!r} "
                        "has none")
    tok = experiment.tokenizer
    if tok.mask_id < 0:
      raise ConfigError(f"mlm_accuracy needs a tokenizer with a mask token; {type(tok).__name__} has none")
    self.exp, self.limit = experiment, config.get("limit") or 500
    self.rate, self.whole_word = float(config.get("rate", 0.15)), bool(config.get("whole_word", True))
    model, method = experiment.model, self.method
    self.predict = common.Encoder(experiment, lambda params, batch: model.apply(
        {"params": params}, batch["image"], batch["text"], method=method).argmax(-1))

  def run(self, params, image_emb=None):
    del image_emb
    tok = self.exp.tokenizer
    n = min(self.limit, len(self.exp.data.test))
    images, texts = _test_inputs(self.exp, n)
    special = tuple(i for i in (tok.pad_id, tok.bos_id, tok.eos_id, tok.mask_id) if i is not None and i >= 0)
    word_start = np.stack([tok.word_starts(t) for t in texts]) if self.whole_word else None
    masked, selected = jax.jit(lambda: masking.mask_tokens(
        jax.random.PRNGKey(0), texts, rate=self.rate, mask_id=tok.mask_id, vocab_size=tok.vocab_size,
        special_ids=special, word_start=word_start))()
    masked, selected = np.asarray(masked), np.asarray(selected)
    predicted = self.predict(params, n, lambda idx: {"image": images[idx], "text": masked[idx]})
    return {"mlm/accuracy": float((predicted == texts)[selected].mean()) if selected.any() else 0.0,
            "mlm/masked_tokens": float(selected.sum())}


EVALUATORS.register("itm_retrieval")(ItmRetrieval)
EVALUATORS.register("mlm_accuracy")(MlmAccuracy)
