"""FLAVA: masked image modeling targets, the codebook command, and a short run of all five objectives."""

import json
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tests import helpers
from vlm_jax.models import vit
from vlm_jax.objectives import masking
from vlm_jax.tools import codebook
from vlm_jax.train import metrics as metrics_lib
from vlm_jax.train import trainer


def test_patch_helpers_match_the_vit_patch_order_and_mask_exactly():
  images = jax.random.normal(jax.random.PRNGKey(0), (2, 16, 16, 3))
  patches = np.asarray(masking.patch_pixels(images, 8))
  np.testing.assert_array_equal(
    patches[0, 1], np.asarray(images[0, 0:8, 8:16]).reshape(-1)
  )  # row-major grid
  normed = np.asarray(masking.normalized_patches(images, 8))
  np.testing.assert_allclose(normed.mean(-1), 0, atol=1e-5)
  np.testing.assert_allclose(normed.std(-1), 1, atol=1e-3)
  mask = np.asarray(masking.mask_patches(jax.random.PRNGKey(1), 2048, 36, 0.4))
  # Exactly 14 of 36 per image; every position equally likely (0.389 +- 0.011 at 1 sigma).
  assert (mask.sum(1) == 14).all() and 0.34 < mask.mean(0).min() and mask.mean(0).max() < 0.44
  codebook_rows = jnp.asarray([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0]])
  np.testing.assert_array_equal(
    masking.nearest_code(jnp.asarray([[9.0, 1.0], [1.0, 1.0], [2.0, 8.0]]), codebook_rows),
    [1, 0, 2],
  )
  # A masked patch is replaced by the mask token before the encoder: outputs change only through it.
  model = vit.VisionTransformer(32, 1, 2, 64, 8, image_size=16, pool="cls", mask_token=True)
  params = model.init(jax.random.PRNGKey(0), images)
  unmasked = model.apply(params, images, patch_mask=jnp.zeros((2, 4), bool))[1]
  np.testing.assert_allclose(unmasked, model.apply(params, images)[1], atol=1e-6)


def test_kmeans_recovers_separated_clusters():
  rng = np.random.default_rng(0)
  centres = rng.normal(size=(4, 6)) * 10
  points = np.concatenate([c + rng.normal(size=(200, 6)) * 0.1 for c in centres]).astype(np.float32)
  found, distortion = codebook.kmeans(points, 4, iterations=10, seed=0)
  assert distortion < 0.1
  for c in centres:
    assert np.min(np.linalg.norm(found - c, axis=1)) < 0.1


@pytest.mark.ci  # the codebook command and a run: subprocess-heavy
def test_codebook_command_and_a_short_flava_run_with_codebook_targets(tmp_path):
  config_arg = helpers.FLAVA_TINY
  out = tmp_path / "codebook.npy"
  result = subprocess.run(
    [
      sys.executable,
      "-m",
      "vlm_jax.tools.codebook",
      "--config",
      config_arg,
      "--config.model.image.variant=micro/8",
      "--config.model.image.image_size=32",
      "--size",
      "32",
      "--images",
      "200",
      "--output",
      str(out),
    ],
    env=helpers.subprocess_env(1),
    capture_output=True,
    text=True,
    timeout=300,
    cwd=helpers.ROOT,
  )
  assert result.returncode == 0, result.stderr[-2000:]
  summary = json.loads(result.stdout.strip().splitlines()[-1])
  assert np.load(out).shape == (32, 8 * 8 * 3) and summary["patches"] == 200 * 16
  codebook_target = {"target": "codebook", "codebook_path": str(out)}
  config = helpers.micro_config(
    helpers.FLAVA_TINY,
    batch_size=32,
    **{
      "model.mim_codes": 32,
      "objectives.mim.target": "codebook",
      "objectives.mim.codebook_path": str(out),
      "objectives.mmm.target": "codebook",
      "objectives.mmm.codebook_path": codebook_target["codebook_path"],
      "train.duration": "40 steps",
      "train.log_every": "10 steps",
      "train.checkpoint_every": "0 steps",
      "optim.lr": 2e-3,
      "optim.warmup": "5 steps",
      "evals.itm_retrieval.rerank_k": 4,
    },
  )
  final = trainer.train(config, str(tmp_path / "run"), log=lambda *a: None)
  records = [r for r in metrics_lib.read_metrics(str(tmp_path / "run")) if "train/loss" in r]
  for name in ("clip_loss", "mim_loss", "mlm_loss", "mmm_loss", "itm_loss"):
    assert records[-1][f"train/{name}"] < records[0][f"train/{name}"], (
      name
    )  # every objective learns
  assert records[-1]["train/mim_acc"] > 1 / 32  # above chance over 32 codes
  assert {"eval/zero_shot/shape_top1", "eval/itm_retrieval/i2t_r1", "eval/mlm/accuracy"} <= set(
    final
  )


def test_itm_reranking_scores_only_the_contrastive_top_k():
  from vlm_jax.eval.matching import rerank
  from vlm_jax.eval.retrieval import recall_at_k

  # contrastive[image, text]: image 1's own text is third by contrastive score; the others are second.
  contrastive = np.array([[4, 5, 0, 0], [5, 0, 4, 0], [0, 0, 4, 5], [5, 0, 0, 4]], np.float32)
  seen = []

  def itm(images, texts):
    seen.append(set(zip(images.tolist(), texts.tolist())))
    return np.where(images == texts, 10.0, 1.0)  # ITM recognises every true pair

  ranked = rerank(contrastive, 2, itm)
  top2 = {0: {1, 0}, 1: {0, 2}, 2: {3, 2}, 3: {0, 3}}
  assert seen[0] == {(i, t) for i, ts in top2.items() for t in ts}  # i2t: exactly the top-2 texts
  assert len(seen[1]) == 8 and all(
    contrastive[i, t] >= np.sort(contrastive[:, t])[-2] for i, t in seen[1]
  )
  # ITM fixes the order within the top 2; image 1's match (text 1) was outside it: a miss at any k.
  assert recall_at_k(ranked["i2t"], (1, 2)) == {1: 0.75, 2: 0.75}


@pytest.mark.recipes
def test_flava_tiny_as_shipped(tmp_path):
  """The FLAVA tiny recipe (about 10 minutes): all five losses fall, ITM beats chance on held-out pairs and
  zero-shot through the contrastive head beats chance."""
  final = helpers.run_recipe(helpers.FLAVA_TINY, tmp_path)
  assert final["eval/itm/pair_auc"] > 0.7, final
  assert (
    final["eval/itm_retrieval/i2t_r10"] > 2 * 10 / 64
    and final["eval/itm_retrieval/t2i_r10"] > 2 * 10 / 64
  )
  assert final["eval/zero_shot/color_top1"] > 3 / 8 and final["eval/zero_shot/shape_top1"] > 2 / 8
  for name in ("clip_loss", "mim_loss", "mlm_loss", "mmm_loss", "itm_loss"):
    assert helpers.losses(tmp_path, name)[-1] < 0.8 * helpers.losses(tmp_path, name)[0], name
