"""Running a model's encoders over many inputs on the mesh, for every evaluator."""

import flax.linen as nn
import jax
import numpy as np

from vlm_jax.core import sharding


class Encoder:
  """Batched, jitted `model.apply(params, x, method=...)` (or `method(params, x)` when it is a function)
  over the mesh; returns host NumPy arrays.

  Every process holds the full input (eval sets are small and deterministic) and feeds its own rows of each
  global batch, so results are identical on any number of processes.
  """

  def __init__(self, experiment, method):
    self.exp = experiment
    mesh = experiment.mesh
    apply = (
      method
      if callable(method)
      else (lambda params, x: experiment.model.apply({"params": params}, x, method=method))
    )
    self._fn = jax.jit(
      apply,
      in_shardings=(experiment.param_shardings, sharding.batch_sharding(mesh)),
      out_shardings=sharding.replicated(mesh),
    )

  def __call__(self, params, n: int, rows):
    """Encodes items 0..n-1; rows(indices) -> np.ndarray of those items' model inputs."""
    exp = self.exp
    global_batch = exp.config.eval_batch_size
    local = global_batch // jax.process_count()
    outputs = []
    with jax.set_mesh(exp.mesh), nn.logical_axis_rules(sharding.RULES):
      for start in range(0, n, global_batch):
        first = start + jax.process_index() * local
        indices = np.minimum(
          np.arange(first, first + local), n - 1
        )  # pad the last batch by repetition
        outputs.append(np.asarray(self._fn(params, exp.global_batch(rows(indices)))))
    return np.concatenate(outputs)[:n] if outputs else np.zeros((0,))


def as_text(value) -> str:
  return value.decode("utf-8") if isinstance(value, bytes) else str(value)


def image_rows(experiment, source):
  return lambda idx: np.stack(
    [experiment.eval_preprocess.image(source[int(i)]["image"]) for i in idx]
  )


def text_rows(experiment, texts):
  return lambda idx: np.stack([experiment.eval_preprocess.text(texts[int(i)]) for i in idx])
