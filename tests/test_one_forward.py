"""One forward pass feeds every objective: each loss equals the previous implementation's (every objective
calling `model.apply` on its own inputs, the vocabulary projected at every position), given the same masks
and negatives, and the composite step costs fewer FLOPs than that implementation's."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from tests import helpers
from vlm_jax.assembly.experiment import Experiment
from vlm_jax.data import transforms
from vlm_jax.objectives import contrastive, masking


def _experiment(recipe, **overrides):
  config = helpers.micro_config(recipe, batch_size=8, **overrides)
  return Experiment(config, devices=jax.devices()[:1], log=lambda *_: None)


def _batch(exp, n=8):
  examples = [exp.train_preprocess(exp.data.train[i], np.random.default_rng(i)) for i in range(n)]
  return {k: jnp.asarray(np.stack([e[k] for e in examples])) for k in examples[0]}


def _masked_ce(logits, targets, selected):
  """The old MLM loss: cross-entropy at every position, weighted by the selection."""
  w = selected.astype(jnp.float32)
  return (optax.softmax_cross_entropy_with_integer_labels(logits, targets) * w).sum() / jnp.maximum(
    w.sum(), 1.0
  )


def _mim(predictions, images, patch_mask, p):
  targets = masking.normalized_patches(images, p)
  w = patch_mask.astype(jnp.float32)
  return (jnp.mean((predictions - targets) ** 2, -1) * w).sum() / jnp.maximum(w.sum(), 1.0)


def _itm(logits, negative):
  return optax.softmax_cross_entropy_with_integer_labels(
    logits, (~negative).astype(jnp.int32)
  ).mean()


def _old_losses(exp, params, batch, requests, *, family):
  """The losses as the objectives computed them before the one-forward design: a model call per objective."""
  model, p = exp.model, exp.config.model.image.variant.split("/")[1]
  apply = lambda *args, **kw: model.apply({"params": params}, *args, **kw)
  # The batch's uint8 pixels, normalised as the composite does on device.
  images = transforms.normalise_on_device(batch["image"], *exp.pixel_stats)
  tokens = batch["text"]
  masked = requests["masked_text"]
  out = {}
  if family == "flava":
    p = int(p)
    scores = apply(tokens, method="encode_text") @ apply(images, method="encode_image").T
    index, negative, _ = requests["itm"](scores)
    out["itm_loss"] = _itm(apply(images[index], tokens, method="itm_logits"), negative)
    out["clip_loss"] = contrastive.clip_loss(
      apply(images, method="encode_image"),
      apply(tokens, method="encode_text"),
      apply(images, tokens)["logit_scale"],
    )[0]
    out["mlm_loss"] = _masked_ce(
      apply(images, masked.tokens, method="text_mlm_logits"), tokens, masked.selected
    )
    out["mim_loss"] = _mim(
      apply(images, tokens, requests["patch_mask"].mask, method="image_mim"),
      images,
      requests["patch_mask"].mask,
      p,
    )
    text_logits, patch_predictions = apply(
      images, masked.tokens, requests["patch_mask"].mask, method="mmm"
    )
    out["mmm_loss"] = _masked_ce(text_logits, tokens, masked.selected) + _mim(
      patch_predictions, images, requests["patch_mask"].mask, p
    )
  else:
    index, negative, _ = requests["itm"](apply(images, tokens, method="match_scores"))
    out["itm_loss"] = _itm(apply(images[index], tokens, method="itm_logits"), negative)
    out["mlm_loss"] = _masked_ce(
      apply(images, masked.tokens, method="mlm_logits"), tokens, masked.selected
    )
  return out


@pytest.mark.parametrize(
  "recipe,family,negatives",
  [(helpers.FLAVA_TINY, "flava", "hard"), (helpers.VILT_TINY, "vilt", "mixed")],
)
def test_every_loss_equals_the_per_objective_implementation(recipe, family, negatives):
  exp = _experiment(recipe, **{"objectives.itm.negatives": negatives})
  params = exp.init_state().params
  batch = _batch(exp)
  rng = jax.random.PRNGKey(3)
  _, metrics = exp.loss(params, batch, rng)
  requests = exp.loss_fn.model_inputs(batch, jax.random.fold_in(rng, 0))
  assert int(requests["masked_text"].selected.sum()) > 0
  assert int(metrics["itm_negatives"]) > 0
  if negatives == "hard":
    assert int(metrics["itm_hard_negatives"]) == int(metrics["itm_negatives"])
  old = _old_losses(exp, params, batch, requests, family=family)
  for name, value in old.items():
    np.testing.assert_allclose(metrics[name], value, rtol=2e-5, atol=1e-6, err_msg=name)
  weights = {k: float(c.get("weight", 1.0)) for k, c in exp.config.objectives.items()}
  np.testing.assert_allclose(
    metrics["loss"], sum(weights[k.removesuffix("_loss")] * v for k, v in old.items()), rtol=2e-5
  )


def test_flava_mlm_and_mmm_share_one_text_mask_and_mim_and_mmm_one_patch_mask():
  exp = _experiment(helpers.FLAVA_TINY)
  assert sorted(exp.loss_fn.requests) == ["itm", "masked_text", "patch_mask"]
  with pytest.raises(ValueError, match="'mlm' and 'mmm' both ask for 'masked_text'"):
    _experiment(helpers.FLAVA_TINY, **{"objectives.mmm.rate": 0.3})


def test_one_forward_costs_fewer_flops_than_a_forward_per_objective():
  """XLA's count for the gradient of the composite loss vs the per-objective implementation's, FLAVA."""
  exp = _experiment(helpers.FLAVA_TINY, **{"objectives.itm.negatives": "hard"})
  params = exp.init_state().params
  batch = _batch(exp)
  rng = jax.random.PRNGKey(0)

  def new(params):
    return exp.loss(params, batch, rng)[0]

  def old(params):
    requests = exp.loss_fn.model_inputs(batch, jax.random.fold_in(rng, 0))
    return sum(_old_losses(exp, params, batch, requests, family="flava").values())

  flops = [
    jax.jit(jax.grad(f)).lower(params).compile().cost_analysis()["flops"] for f in (new, old)
  ]
  assert flops[0] < 0.75 * flops[1], flops
