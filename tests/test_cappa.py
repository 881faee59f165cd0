"""CapPa: the loss equals a hand-computed cross-entropy over autoregressive and parallel rows, parallel rows
see no text, and a short run learns to caption."""

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tests import helpers
from vlm_jax.assembly.experiment import Experiment
from vlm_jax.data import transforms
from vlm_jax.train import trainer

CAPPA_TINY = os.path.join(helpers.ROOT, "experiments", "cappa_b16.py") + ":tiny"
MICRO = {
  "model.encoder.variant": "micro",
  "model.decoder.variant": "micro",
  "model.image.variant": "micro/8",
  "model.image.image_size": 32,
}


def _experiment(**overrides):
  config = helpers.micro_config(CAPPA_TINY, batch_size=16, **{**MICRO, **overrides})
  return Experiment(config, devices=jax.devices()[:1], log=lambda *_: None)


def _log_softmax(x):
  x = x - x.max(-1, keepdims=True)
  return x - np.log(np.exp(x).sum(-1, keepdims=True))


def test_cappa_loss_matches_a_hand_computed_reference():
  exp = _experiment()
  params = exp.init_state().params
  examples = [exp.train_preprocess(exp.data.train[i], np.random.default_rng(i)) for i in range(16)]
  batch = {k: jnp.asarray(np.stack([e[k] for e in examples])) for k in examples[0]}
  rng = jax.random.PRNGKey(1)
  _, metrics = exp.loss(params, batch, rng)
  drawn = exp.loss_fn.model_inputs(batch, jax.random.fold_in(rng, 0))["lm/cappa"]
  parallel = np.asarray(drawn.parallel)
  assert (
    0 < parallel.sum() < len(parallel)
  )  # both kinds in the batch (0.75 of 16 expected parallel)

  # Autoregressive rows: the teacher-forced captioning logits. Parallel rows: a decoder fed only mask tokens
  # that attends to all positions, so its logits do not depend on the caption: give it other captions.
  apply = lambda *args, **kw: exp.model.apply({"params": params}, *args, **kw)
  tokens = np.asarray(batch["text"])
  images = transforms.normalise_on_device(batch["image"], *exp.pixel_stats)  # as the step does
  ar_logits = np.asarray(apply(images, batch["text"], method="caption_logits"))
  other = jnp.asarray(np.roll(tokens, 1, axis=0))
  ones = jnp.ones(len(tokens), jnp.int32)
  parallel_logits = np.asarray(
    apply(images, other, ones, parallel=jnp.ones(len(tokens), bool), method="prefix_lm_logits")
  )
  same = np.asarray(
    apply(
      images, batch["text"], ones, parallel=jnp.ones(len(tokens), bool), method="prefix_lm_logits"
    )
  )
  np.testing.assert_allclose(parallel_logits, same, rtol=1e-5, atol=1e-5)
  logits = np.where(parallel[:, None, None], parallel_logits, ar_logits)

  targets, counted = tokens[:, 1:], tokens[:, 1:] != exp.tokenizer.pad_id
  nll = -np.take_along_axis(
    _log_softmax(logits[:, :-1].astype(np.float64)), targets[..., None], -1
  )[..., 0]
  # big_vision's normalisation: each caption's mean over its tokens, then the mean over captions.
  per_caption = (nll * counted).sum(1) / counted.sum(1)
  np.testing.assert_allclose(metrics["cappa_loss"], per_caption.mean(), rtol=1e-5)
  np.testing.assert_allclose(
    metrics["cappa_parallel_loss"], nll[counted & parallel[:, None]].mean(), rtol=1e-5
  )
  np.testing.assert_allclose(
    metrics["cappa_ar_loss"], nll[counted & ~parallel[:, None]].mean(), rtol=1e-5
  )
  assert metrics["cappa_tokens"] == counted.sum()


def test_cappa_needs_a_prefix_lm_model():
  with pytest.raises(ValueError, match="the cappa objective needs the model output 'lm/cappa'"):
    helpers_config = helpers.micro_config(
      helpers.TINY, **{"objectives": {"cappa": {"weight": 1.0}}}
    )
    Experiment(helpers_config, devices=jax.devices()[:1], log=lambda *_: None)


def test_short_cappa_run_learns_captions(tmp_path):
  config = helpers.micro_config(
    CAPPA_TINY,
    batch_size=32,
    **{
      **MICRO,
      "train.duration": "60 steps",
      "train.log_every": "10 steps",
      "train.checkpoint_every": "0 steps",
      "optim.lr": 3e-3,
      "optim.warmup": "10 steps",
      "evals.captioning.every": "60 steps",
      "evals.captioning.limit": 32,
      "evals.zero_shot_likelihood.every": "0 steps",
      "evals.linear_probe.every": "60 steps",
      "evals.linear_probe.limit": 64,
      "evals.linear_probe.train_limit": 256,
      "evals.linear_probe.shots": (5,),
    },
  )
  final = trainer.train(config, str(tmp_path), log=lambda *a: None)
  for name in ("cappa_parallel_loss", "cappa_ar_loss"):
    losses = helpers.losses(tmp_path, name)
    assert losses[-1] < 0.7 * losses[0], (name, losses)
  assert "eval/captioning/cider" in final and "eval/linear_probe/shape_full_top1" in final, sorted(
    final
  )


@pytest.mark.recipes  # 5 minutes: beyond CI's 40 (its learning is checked, shortened, in the fast tier)
def test_cappa_tiny_as_shipped(tmp_path):
  """The CapPa tiny recipe (about 5 minutes): captions, likelihood zero-shot and linear probe above chance."""
  final = helpers.run_recipe(CAPPA_TINY, tmp_path)
  assert final["eval/captioning/color_mention_acc"] > 3 / 8 and final["eval/captioning/cider"] > 1.0
  assert final["eval/zero_shot_likelihood/color_top1"] > 3 / 8
  assert final["eval/linear_probe/shape_full_top1"] > 2 * final["eval/linear_probe/shape_chance"]
  for name in ("cappa_parallel_loss", "cappa_ar_loss"):
    assert helpers.losses(tmp_path, name)[-1] < 0.5 * helpers.losses(tmp_path, name)[0]
