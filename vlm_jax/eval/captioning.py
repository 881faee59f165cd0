"""Caption generation evaluated by what the captions say: does a greedy caption name the image's class?

For each label key (e.g. shape, color) the first class name mentioned in the caption is the prediction;
accuracy is compared with chance (1 / number of classes). When the examples carry reference captions
(`captions`), the same generated captions get BLEU-1..4, ROUGE-L and CIDEr-D (`text_metrics`); the
eval harness's record keeps each image's caption and scores (`per_image`).
"""

import re

import numpy as np

from vlm_jax import generate
from vlm_jax.errors import ConfigError
from vlm_jax.eval import common, text_metrics
from vlm_jax.registry import EVALUATORS


def first_mention(caption: str, names) -> int:
  """Index into `names` of the name mentioned first in `caption` (whole words, plurals too: 'circles'
  mentions 'circle'; the longest name wins ties), or -1."""
  best, best_key = -1, None
  for i, name in enumerate(names):
    match = re.search(rf"\b{re.escape(name.lower())}(e?s)?\b", caption.lower())
    if match and (best_key is None or (match.start(), -len(name)) < best_key):
      best, best_key = i, (match.start(), -len(name))
  return best


class Captioning:
  """config: label_keys (default shape, color), limit (examples), max_len (default: the text length),
  beams (1: greedy), length_penalty (beam search)."""

  needs = ("decode",)
  defaults = dict(label_keys=("shape", "color"), limit=500)
  needs_image_emb = False

  def __init__(self, config, experiment):
    self.exp = experiment
    if not hasattr(experiment.model, "decode"):
      raise ConfigError(
        f"the captioning evaluator needs a model that writes text; {experiment.config.model.name!r} "
        "has no decoder"
      )
    self.label_keys = tuple(config.get("label_keys", ("shape", "color")))
    for key in self.label_keys:
      if key not in experiment.data.class_names:
        raise ConfigError(
          f"captioning label key {key!r} is not in the dataset; it has "
          f"{', '.join(experiment.data.class_names)}"
        )
    self.limit = config.get("limit") or None
    self.max_len = config.get("max_len") or experiment.max_len
    self.generator = common.Encoder(
      experiment,
      generate.captioner(
        experiment.model,
        experiment.tokenizer,
        self.max_len,
        beams=int(config.get("beams", 1)),
        length_penalty=float(config.get("length_penalty", 0.0)),
      ),
    )

  def generate(self, params, n: int):
    """Generated captions (strings) of the first n test images."""
    tokens = self.generator(params, n, common.image_rows(self.exp, self.exp.data.test))
    return [self.exp.tokenizer.decode(row) for row in tokens]

  def run(self, params, image_emb=None):
    del image_emb
    source = self.exp.data.test
    n = len(source) if self.limit is None else min(self.limit, len(source))
    texts = self.generate(params, n)
    metrics = {"captioning/mean_words": float(np.mean([len(t.split()) for t in texts]))}
    for key in self.label_keys:
      names = self.exp.data.class_names[key]
      predicted = np.array([first_mention(t, names) for t in texts])
      labels = np.array([source[i][key] for i in range(n)])
      metrics[f"captioning/{key}_mention_acc"] = float(np.mean(predicted == labels))
      metrics[f"captioning/{key}_chance"] = 1.0 / len(names)
    # Per image, for the eval record (`per_image`): each generated caption and, with references,
    # its BLEU-4 / ROUGE-L / CIDEr-D.
    self.per_image = {"key": [str(source[i].get("key", i)) for i in range(n)], "caption": texts}
    if n and "captions" in source[0]:
      references = [[common.as_text(c) for c in source[i]["captions"]] for i in range(n)]
      scores = text_metrics.caption_scores(texts, references, per_image=True)
      self.per_image.update(scores.pop("per_image"))
      metrics.update({f"captioning/{k}": v for k, v in scores.items()})
    return metrics


EVALUATORS.register("captioning")(Captioning)
