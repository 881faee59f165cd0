r"""Fit a k-means codebook of image patches: the visual tokens that masked image modeling predicts.

  python -m vlm_jax.tools.codebook --config experiments/flava_b16.py:tiny --size 256 --output runs/codebook.npy

Patches come from the config's training images at the model's input size, normalised per patch as MIM
targets are, so a patch's code is the nearest centroid of exactly what the objective sees. Deterministic
given --seed. Prints one JSON line (codes, patches used, mean squared distance to the nearest code).
"""

import io
import json

from absl import app, flags, logging
import numpy as np

from vlm_jax import storage
from vlm_jax.cli import FLAGS, fail, parse_flags

flags.DEFINE_integer("size", 256, "Number of codes (visual tokens).")
flags.DEFINE_integer("images", 2000, "Training images to take patches from.")
flags.DEFINE_integer("iterations", 25, "Lloyd iterations.")
flags.DEFINE_integer("seed", 0, "Seed for the image sample and the k-means++ initialisation.")
flags.DEFINE_string("output", None, "Where to write the [size, patch_dim] float32 .npy codebook.")


def kmeans(points: np.ndarray, k: int, iterations: int, seed: int):
  """k-means++ initialisation then Lloyd iterations. Returns (centroids [k, d], mean squared distance)."""
  import jax  # pylint: disable=import-outside-toplevel
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel

  from vlm_jax.objectives.masking import nearest_code  # pylint: disable=import-outside-toplevel

  if len(points) < k:
    raise ValueError(
      f"{len(points)} patches cannot make {k} codes; use more --images or a smaller --size"
    )
  rng = np.random.default_rng(seed)
  squares = np.sum(points**2, axis=1)
  # |p - c|^2 as |p|^2 - 2 p.c + |c|^2: a matrix-vector product per draw, no [N, D] temporaries.
  distance = lambda c: np.maximum(squares - 2 * (points @ c) + c @ c, 0)
  centroids = [points[rng.integers(len(points))]]
  closest = distance(centroids[0])
  for _ in range(1, k):
    centroids.append(points[rng.choice(len(points), p=closest / closest.sum())])
    closest = np.minimum(closest, distance(centroids[-1]))
  centroids = np.stack(centroids)
  x = jnp.asarray(points)

  # x is an argument, not a closure: a closed-over array would compile into the program as a constant.
  @jax.jit
  def lloyd(x, centroids):
    codes = nearest_code(x, centroids)
    sums = jax.ops.segment_sum(x, codes, num_segments=k)
    counts = jnp.bincount(codes, length=k)[:, None]
    # An empty cluster keeps its centroid rather than collapsing to zero.
    return jnp.where(counts > 0, sums / jnp.maximum(counts, 1), centroids)

  centroids = jnp.asarray(centroids)
  for _ in range(iterations):
    centroids = lloyd(x, centroids)
  codes = np.asarray(jax.jit(nearest_code)(x, centroids))
  centroids = np.asarray(centroids, np.float32)
  return centroids, float(np.mean(np.sum((points - centroids[codes]) ** 2, axis=1)))


def patches_of(config, images: int, seed: int) -> np.ndarray:
  """Normalised patches of `images` training images, preprocessed as for evaluation (no augmentation)."""
  from vlm_jax import builtins  # noqa: F401  pylint: disable=import-outside-toplevel,unused-import  (registers the built-ins)
  from vlm_jax.data import transforms  # pylint: disable=import-outside-toplevel
  from vlm_jax.objectives.masking import normalized_patches  # pylint: disable=import-outside-toplevel
  from vlm_jax.registry import DATASETS  # pylint: disable=import-outside-toplevel

  data = DATASETS.get(config.data.name)(config.data)
  preprocess = transforms.Preprocess.from_config(config, None)
  rows = np.random.default_rng(seed).choice(
    len(data.train), size=min(images, len(data.train)), replace=False
  )
  pixels = np.stack([preprocess.image(data.train[int(i)]["image"]) for i in sorted(rows)])
  from vlm_jax.models import vit  # pylint: disable=import-outside-toplevel

  patch = vit.parse_variant(config.model.image.variant)["patch_size"]
  return np.asarray(normalized_patches(pixels, patch)).reshape(-1, patch * patch * 3)


def main(argv):
  del argv
  if FLAGS.config is None or not FLAGS.output:
    fail("--config and --output are required")
  from vlm_jax.errors import ConfigError  # pylint: disable=import-outside-toplevel

  try:
    points = patches_of(FLAGS.config, FLAGS.images, FLAGS.seed)
    centroids, distortion = kmeans(points, FLAGS.size, FLAGS.iterations, FLAGS.seed)
  except (ConfigError, ValueError) as e:
    fail(str(e))
  buffer = io.BytesIO()
  np.save(buffer, centroids)
  storage.write_bytes(FLAGS.output, buffer.getvalue())
  print(
    json.dumps(
      {
        "codes": FLAGS.size,
        "patches": len(points),
        "patch_dim": points.shape[1],
        "mean_sq_distance": distortion,
        "output": FLAGS.output,
      }
    )
  )


if __name__ == "__main__":
  logging.set_verbosity(logging.WARNING)
  app.run(main, flags_parser=parse_flags)
