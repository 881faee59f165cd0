"""Linear probe on frozen image features: a closed-form ridge-regression classifier per label key.

Features are the model's image embeddings (`encode_image`). For each label key, one-hot targets are fitted
in closed form, W = (X'X + l2 n I)^-1 X'Y on centred features (the bias is the targets' mean), with the
regularisation `l2` chosen from `l2_grid` on `val_size` training examples that no probe is fitted on.
Probes: few-shot (`shots`: k examples per class, drawn with a fixed seed) and full (`train_limit`
training examples). Test: the first `limit` test examples.
"""

import numpy as np

from vlm_jax.errors import ConfigError
from vlm_jax.eval import common
from vlm_jax.registry import EVALUATORS


def ridge_fit(x: np.ndarray, y: np.ndarray, l2: float):
  """Closed-form ridge regression -> (W [d, c], b [c]) minimising |x W + b - y|^2 / n + l2 |W|^2."""
  x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
  mean_x, mean_y = x.mean(0), y.mean(0)
  xc = x - mean_x
  w = np.linalg.solve(xc.T @ xc + l2 * len(x) * np.eye(x.shape[1]), xc.T @ (y - mean_y))
  return w, mean_y - mean_x @ w


def ridge_classify(train_x, train_labels, test_x, num_classes: int, l2: float) -> np.ndarray:
  w, b = ridge_fit(train_x, np.eye(num_classes)[train_labels], l2)
  return np.argmax(np.asarray(test_x, np.float64) @ w + b, axis=1)


def few_shot_indices(labels: np.ndarray, shots: int, seed: int = 0) -> np.ndarray:
  """`shots` indices per class present in `labels` (fewer if a class has fewer), drawn with `seed`."""
  rng = np.random.default_rng(seed)
  picked = [rng.permutation(np.flatnonzero(labels == c))[:shots] for c in np.unique(labels)]
  return np.sort(np.concatenate(picked))


class LinearProbe:
  """config: label_keys, shots (default 1, 5, 10), train_limit (5000), val_size (500), limit (test, 1000),
  l2_grid, seed."""

  needs = ("encode_image",)
  defaults = dict(label_keys=("shape", "color"), shots=(1, 5, 10), train_limit=5000, limit=1000)
  needs_image_emb = True

  def __init__(self, config, experiment):
    if not hasattr(experiment.model, "encode_image"):
      raise ConfigError(
        f"the linear_probe evaluator needs image embeddings; {experiment.config.model.name!r} "
        "has no encode_image"
      )
    self.exp = experiment
    self.label_keys = tuple(config.get("label_keys", ("shape", "color")))
    for key in self.label_keys:
      if key not in experiment.data.class_names:
        raise ConfigError(
          f"linear_probe label key {key!r} is not in the dataset; it has "
          f"{', '.join(experiment.data.class_names)}"
        )
    self.shots = tuple(int(k) for k in config.get("shots", (1, 5, 10)))
    self.train_limit, self.val_size = (
      int(config.get("train_limit", 5000)),
      int(config.get("val_size", 500)),
    )
    self.limit = config.get("limit", 1000) or None
    self.l2_grid = tuple(float(v) for v in config.get("l2_grid", (1e-6, 1e-4, 1e-3, 1e-2, 1e-1)))
    self.seed = int(config.get("seed", 0))
    self.encoder = common.Encoder(experiment, "encode_image")

  def run(self, params, image_emb):
    train, test = self.exp.data.train, self.exp.data.test
    pool = min(len(train), self.train_limit + self.val_size)
    if pool < 2:
      raise ConfigError(
        f"linear probe: {self.exp.data.description} has {len(train)} training images; it needs "
        "some to fit the probe and some to choose its L2 penalty"
      )
    # A small training set keeps half its images for fitting the probe.
    val_size = min(self.val_size, pool // 2)
    order = np.random.default_rng(self.seed).permutation(len(train))[:pool]
    features = self.encoder(params, pool, common.image_rows(self.exp, _Subset(train, order)))
    val_x, fit_x = features[:val_size], features[val_size:]
    n = len(image_emb)
    metrics = {}
    for key in self.label_keys:
      classes = len(self.exp.data.class_names[key])
      labels = np.array([train[int(i)][key] for i in order])
      val_y, fit_y = labels[:val_size], labels[val_size:]
      test_y = np.array([test[i][key] for i in range(n)])
      probes = {f"{k}shot": few_shot_indices(fit_y, k, self.seed) for k in self.shots}
      probes["full"] = np.arange(len(fit_y))
      for name, idx in probes.items():
        val_acc = [
          np.mean(ridge_classify(fit_x[idx], fit_y[idx], val_x, classes, l2) == val_y)
          for l2 in self.l2_grid
        ]
        l2 = self.l2_grid[int(np.argmax(val_acc))]
        predicted = ridge_classify(fit_x[idx], fit_y[idx], image_emb, classes, l2)
        metrics[f"linear_probe/{key}_{name}_top1"] = float(np.mean(predicted == test_y))
      metrics[f"linear_probe/{key}_chance"] = 1.0 / classes
    return metrics


class _Subset:
  def __init__(self, source, indices):
    self.source, self.indices = source, indices

  def __getitem__(self, i):
    return self.source[int(self.indices[i])]

  def __len__(self):
    return len(self.indices)


EVALUATORS.register("linear_probe")(LinearProbe)
