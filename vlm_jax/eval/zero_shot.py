"""Zero-shot classification: class embeddings from prompt templates, images scored against them."""

import numpy as np

from vlm_jax.data import benchmark_names
from vlm_jax.errors import ConfigError
from vlm_jax.eval import common
from vlm_jax.registry import EVALUATORS

DEFAULT_TEMPLATES = ("a photo of a {}.", "a {}.", "an image of a {}.", "a picture showing a {}.")


def class_embeddings(
  text_embeddings: np.ndarray, num_classes: int, num_templates: int
) -> np.ndarray:
  """Mean of each class's normalised template embeddings, renormalised (CLIP's prompt ensembling)."""
  emb = text_embeddings.reshape(num_classes, num_templates, -1)
  emb = emb / np.linalg.norm(emb, axis=-1, keepdims=True)
  mean = emb.mean(axis=1)
  return mean / np.linalg.norm(mean, axis=-1, keepdims=True)


def topk_accuracy(scores: np.ndarray, labels: np.ndarray, k: int) -> float:
  topk = np.argsort(-scores, axis=1, kind="stable")[:, :k]
  return float(np.mean(np.any(topk == labels[:, None], axis=1)))


def mean_per_class_recall(scores: np.ndarray, labels: np.ndarray) -> float:
  """Top-1 recall averaged over the classes present (CLIP_benchmark's `mean_per_class_recall`)."""
  correct = np.argmax(scores, axis=1) == labels
  return float(np.mean([correct[labels == c].mean() for c in np.unique(labels)]))


def templates_of(value) -> tuple:
  """A template set's name (benchmark_names.TEMPLATES) or the templates themselves."""
  if isinstance(value, str):
    if value not in benchmark_names.TEMPLATES:
      raise ConfigError(
        f"unknown template set {value!r}; known: {', '.join(benchmark_names.TEMPLATES)} (or give "
        "a list of templates with {} for the class name)"
      )
    return tuple(benchmark_names.TEMPLATES[value])
  return tuple(value)


class ZeroShot:
  """config: label_keys (dataset label keys, e.g. shape, color), templates (a list, or the name of a set
  in `benchmark_names.TEMPLATES`, e.g. openai_imagenet), limit (examples, optional)."""

  needs = (
    "encode_image",
    "encode_text",
  )  # the model methods it calls: the harness runs it where they exist
  defaults = dict(label_keys=("shape", "color"))

  def __init__(self, config, experiment):
    self.exp = experiment
    self.label_keys = tuple(config.get("label_keys", ("shape",)))
    for key in self.label_keys:
      if key not in experiment.data.class_names:
        raise ConfigError(
          f"zero_shot label key {key!r} is not in the dataset; it has "
          f"{', '.join(experiment.data.class_names)}"
        )
    self.templates = templates_of(config.get("templates", DEFAULT_TEMPLATES))
    self.limit = config.get("limit") or None
    self.text_encoder = common.Encoder(experiment, "encode_text")

  def run(self, params, image_emb):
    """image_emb: the test images' embeddings (the runner computes them once for all evaluators)."""
    source = self.exp.data.test
    n = len(source) if self.limit is None else min(self.limit, len(source))
    metrics = {}
    for key in self.label_keys:
      names = self.exp.data.class_names[key]
      prompts = [t.format(name) for name in names for t in self.templates]
      text_emb = self.text_encoder(params, len(prompts), common.text_rows(self.exp, prompts))
      classifier = class_embeddings(text_emb, len(names), len(self.templates))
      labels = np.array([source[i][key] for i in range(n)])
      scores = image_emb @ classifier.T
      metrics[f"zero_shot/{key}_top1"] = topk_accuracy(scores, labels, 1)
      if len(names) > 5:
        metrics[f"zero_shot/{key}_top5"] = topk_accuracy(scores, labels, 5)
        metrics[f"zero_shot/{key}_mean_per_class_recall"] = mean_per_class_recall(scores, labels)
      metrics[f"zero_shot/{key}_chance"] = 1.0 / len(names)
    return metrics


EVALUATORS.register("zero_shot")(ZeroShot)
