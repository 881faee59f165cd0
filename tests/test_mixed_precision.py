"""bfloat16 compute over float32 parameters and optimizer state: training follows the float32 run."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tests import helpers
from vlm_jax.assembly.experiment import Experiment

STEPS = 12


def _losses(recipe, dtype, **overrides):
  config = helpers.micro_config(recipe, **{"model.dtype": dtype, "mesh": "data:1", **overrides})
  exp = Experiment(config, devices=jax.devices()[:1], log=lambda *a: None)
  state = exp.init_state()
  iterator = exp.train_iterator()
  batches = [exp.global_batch(next(iterator)) for _ in range(STEPS)]
  step = exp.compile_train_step(state, batches[0])
  losses = []
  for batch in batches:
    state, metrics = step(state, batch)
    losses.append(float(metrics["loss"]))
  return np.array(losses), state


@pytest.mark.parametrize("recipe", [helpers.TINY, helpers.PREFIXLM_TINY], ids=["clip", "prefix_lm"])
def test_bfloat16_training_follows_float32_with_float32_state(recipe):
  f32, _ = _losses(recipe, "float32", **{"optim.lr": 1e-3})
  bf16, state = _losses(recipe, "bfloat16", **{"optim.lr": 1e-3})
  # The same init and batches: bf16 rounding (8 mantissa bits) moves each step's loss by well under 3%.
  np.testing.assert_allclose(bf16, f32, rtol=0.03)
  assert bf16[-3:].mean() < bf16[:3].mean() - 0.05  # and it learns
  for leaf in jax.tree.leaves((state.params, state.opt_state)):
    if jnp.issubdtype(leaf.dtype, jnp.floating):
      assert leaf.dtype == jnp.float32
