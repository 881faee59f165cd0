"""Running a model's encoders over many inputs on the mesh, for every evaluator."""

import concurrent.futures
import os

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
    """Encodes items 0..n-1; rows(indices) -> np.ndarray of those items' model inputs. The next batch's
    rows are read and decoded on a host thread while the device runs the current one."""
    exp = self.exp
    global_batch = exp.config.eval_batch_size
    local = global_batch // jax.process_count()

    def batch_rows(start):
      first = start + jax.process_index() * local
      return rows(np.minimum(np.arange(first, first + local), n - 1))  # last batch: repeat the last

    outputs = []
    starts = range(0, n, global_batch)
    with (
      jax.set_mesh(exp.mesh),
      nn.logical_axis_rules(sharding.RULES),
      concurrent.futures.ThreadPoolExecutor(1) as reader,
    ):
      pending = reader.submit(batch_rows, starts[0]) if starts else None
      for i in range(len(starts)):
        current = pending.result()
        if i + 1 < len(starts):
          pending = reader.submit(batch_rows, starts[i + 1])
        outputs.append(np.asarray(self._fn(params, exp.global_batch(current))))
    return np.concatenate(outputs)[:n] if outputs else np.zeros((0,))


def as_text(value) -> str:
  return value.decode("utf-8") if isinstance(value, bytes) else str(value)


# Image decoding and resizing release the GIL: a batch's images are prepared on host threads.
_DECODERS = concurrent.futures.ThreadPoolExecutor(max(1, min(16, os.cpu_count() or 1)))


def image_rows(experiment, source):
  image = lambda i: experiment.eval_preprocess.image(source[int(i)]["image"])
  return lambda idx: np.stack(list(_DECODERS.map(image, idx)))


def text_rows(experiment, texts):
  return lambda idx: np.stack([experiment.eval_preprocess.text(texts[int(i)]) for i in idx])
