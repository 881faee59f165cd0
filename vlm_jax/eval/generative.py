"""Evaluators for models that write text: VQA (answers generated from a question prompt) and zero-shot
classification by likelihood (which class prompt, e.g. "a photo of a {label}", is the likeliest caption).
"""

import collections
import functools

import jax
import jax.numpy as jnp
import numpy as np

from vlm_jax import generate
from vlm_jax.errors import ConfigError
from vlm_jax.eval import common, text_metrics
from vlm_jax.registry import EVALUATORS


def _check_writes_text(experiment, evaluator: str, method: str):
  if not hasattr(experiment.model, method):
    raise ConfigError(
      f"the {evaluator} evaluator needs a model that writes text; {experiment.config.model.name!r} "
      f"has no {method}"
    )


def _decode_answer(tokenizer, row) -> str:
  return tokenizer.decode(np.asarray(row))


class Vqa:
  """Every question of the first `limit` test images, answered greedily (or with `beams`) after a prompt of
  start token + question; scored with the VQA accuracy (`text_metrics.vqa_accuracy`), overall and per
  question type, next to chance (1 / number of possible answers of that type).

  config: limit (images), max_answer_len (tokens, default 4), beams (1).
  """

  needs = ("decode", "prefix_lm_logits")
  defaults = dict(limit=200)
  needs_image_emb = False

  def __init__(self, config, experiment):
    _check_writes_text(experiment, "vqa", "decode")
    self.exp = experiment
    self.limit = config.get("limit") or None
    tok = experiment.tokenizer
    steps, beams = int(config.get("max_answer_len", 4)), int(config.get("beams", 1))
    answer = lambda params, batch: generate.generate(
      experiment.model,
      params,
      batch["image"],
      batch["prompt"],
      steps,
      eos_id=tok.eos_id,
      pad_id=tok.pad_id,
      beams=beams,
      vocab_size=tok.vocab_size,
    )
    self.answerer = common.Encoder(experiment, answer)

  def run(self, params, image_emb=None):
    del image_emb
    source, pre = self.exp.data.test, self.exp.eval_preprocess
    n = len(source) if self.limit is None else min(self.limit, len(source))
    if n and "questions" not in source[0]:
      raise ConfigError(
        "the vqa evaluator needs a dataset with questions and answers (the embedded data has them)"
      )
    rows = [
      (i, q, a, t)
      for i in range(n)
      for q, a, t in zip(source[i]["questions"], source[i]["answers"], source[i]["question_types"])
    ]
    image = functools.lru_cache(maxsize=4 * self.exp.config.eval_batch_size)(
      lambda i: pre.image(source[i]["image"])  # an image's questions are consecutive rows
    )
    prompts = (
      np.stack([pre.prompt(q) for _, q, _, _ in rows])
      if rows
      else np.zeros((0, pre.max_len), np.int32)
    )
    batch = lambda idx: {
      "image": np.stack([image(rows[int(k)][0]) for k in idx]),
      "prompt": prompts[idx],
    }
    out = self.answerer(params, len(rows), batch)
    scores = collections.defaultdict(list)
    for (_, _, answer, qtype), tokens in zip(rows, out):
      name = (
        common.as_text(qtype)
        if isinstance(qtype, (str, bytes))
        else self.exp.data.question_types[int(qtype)]
      )
      scores[name].append(
        text_metrics.vqa_accuracy(
          _decode_answer(self.exp.tokenizer, tokens),
          # one answer (the embedded data) or VQAv2's 10 human answers
          [common.as_text(a) for a in answer]
          if isinstance(answer, (list, tuple))
          else common.as_text(answer),
        )
      )
    metrics = {
      "vqa/accuracy": float(np.mean([s for v in scores.values() for s in v])) if rows else 0.0,
      "vqa/questions": float(len(rows)),
    }
    for name, values in scores.items():
      metrics[f"vqa/{name}_acc"] = float(np.mean(values))
      options = self.exp.data.class_names.get(name)
      if options:
        metrics[f"vqa/{name}_chance"] = 1.0 / len(options)
    return metrics


class LikelihoodZeroShot:
  """Zero-shot classification for generative models: each class's prompts (templates such as
  "a photo of a {}.") are scored by their log-likelihood as the image's caption, summed over tokens and
  averaged over templates; the likeliest class is the prediction.

  config: label_keys, templates, limit (examples).
  """

  needs = ("caption_logits",)
  defaults = dict(label_keys=("shape", "color"), templates=("a photo of a {}",), limit=500)
  needs_image_emb = False

  def __init__(self, config, experiment):
    _check_writes_text(experiment, "zero_shot_likelihood", "caption_logits")
    self.exp = experiment
    self.label_keys = tuple(config.get("label_keys", ("shape",)))
    for key in self.label_keys:
      if key not in experiment.data.class_names:
        raise ConfigError(
          f"zero_shot_likelihood label key {key!r} is not in the dataset; it has "
          f"{', '.join(experiment.data.class_names)}"
        )
    self.templates = tuple(config.get("templates", ("a photo of a {}.",)))
    self.limit = config.get("limit") or None
    pad_id = experiment.tokenizer.pad_id
    model = experiment.model

    def log_likelihood(params, batch):
      """batch: image [b, S, S, 3], prompts [b, P, L] -> [b, P] summed log-probabilities of each prompt."""
      b, p, length = batch["prompts"].shape
      images = jnp.repeat(batch["image"], p, axis=0)
      tokens = batch["prompts"].reshape(b * p, length)
      logits = model.apply({"params": params}, images, tokens, method="caption_logits")
      logp = jax.nn.log_softmax(logits[:, :-1].astype(jnp.float32))
      picked = jnp.take_along_axis(logp, tokens[:, 1:, None], axis=2)[..., 0]
      return (picked * (tokens[:, 1:] != pad_id)).sum(axis=1).reshape(b, p)

    self.scorer = common.Encoder(experiment, log_likelihood)

  def run(self, params, image_emb=None):
    del image_emb
    source, pre = self.exp.data.test, self.exp.eval_preprocess
    n = len(source) if self.limit is None else min(self.limit, len(source))
    images = common.image_rows(self.exp, source)
    metrics = {}
    for key in self.label_keys:
      names = self.exp.data.class_names[key]
      prompts = np.stack([pre.text(t.format(name)) for name in names for t in self.templates])
      scores = self.scorer(
        params,
        n,
        lambda idx: {
          "image": images(idx),
          "prompts": np.broadcast_to(prompts, (len(idx),) + prompts.shape),  # noqa: B023
        },
      )
      scores = scores.reshape(n, len(names), len(self.templates)).mean(axis=2)
      labels = np.array([source[i][key] for i in range(n)])
      metrics[f"zero_shot_likelihood/{key}_top1"] = float(
        np.mean(np.argmax(scores, axis=1) == labels)
      )
      metrics[f"zero_shot_likelihood/{key}_chance"] = 1.0 / len(names)
    return metrics


EVALUATORS.register("vqa")(Vqa)
EVALUATORS.register("zero_shot_likelihood")(LikelihoodZeroShot)
