"""The vocabulary is padded to a multiple of 128 for sharding (models/text.py: pad_vocab); the padded
columns are no tokens, so no loss, likelihood or generation may give them probability mass. Shown by
behaviour: whatever the parameters of the padded columns hold, every loss of every family with a head over
the vocabulary is unchanged."""

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tests import helpers
from vlm_jax.assembly.experiment import Experiment
from vlm_jax.models import text

pytestmark = (
  pytest.mark.ci
)  # six recipes' experiments: CI's second tier, to keep the fast one short

CAPPA_TINY = os.path.join(helpers.ROOT, "experiments", "cappa_b16.py") + ":tiny"
RECIPES = [
  helpers.VILT_TINY,
  helpers.FLAVA_TINY,
  helpers.COCA_TINY,
  helpers.PREFIXLM_TINY,
  helpers.SIMVLM_TINY,
  CAPPA_TINY,
]


def _scramble_padded_columns(params, used: int, padded: int, rng):
  """Large random values in every parameter slice indexed by a padded vocabulary id; (params, count)."""
  count = 0

  def scramble(x):
    nonlocal count
    x = np.array(x)
    for axis, size in enumerate(x.shape):
      if size == padded:
        index = [slice(None)] * x.ndim
        index[axis] = slice(used, None)
        x[tuple(index)] = 10.0 * rng.standard_normal(x[tuple(index)].shape)
        count += 1
    return jnp.asarray(x)

  return jax.tree.map(scramble, params), count


@pytest.mark.parametrize("recipe", RECIPES, ids=lambda r: os.path.basename(r))
def test_padded_vocabulary_columns_change_no_loss(recipe):
  exp = Experiment(
    helpers.micro_config(recipe, batch_size=8), devices=jax.devices()[:1], log=lambda *_: None
  )
  used = exp.tokenizer.vocab_size
  padded = text.pad_vocab(used)
  assert padded > used, (
    "the embedded tokenizer's vocabulary must be padded for this test to say anything"
  )
  params = exp.init_state().params
  scrambled, count = _scramble_padded_columns(params, used, padded, np.random.default_rng(0))
  assert count > 0
  examples = [exp.train_preprocess(exp.data.train[i], np.random.default_rng(i)) for i in range(8)]
  batch = {k: jnp.asarray(np.stack([e[k] for e in examples])) for k in examples[0]}
  losses = lambda p: exp.loss(p, batch, jax.random.PRNGKey(0))[1]
  before, after = losses(params), losses(scrambled)
  vocab_losses = [k for k in before if k.endswith("_loss") and "clip" not in k and "itm" not in k]
  assert vocab_losses, sorted(before)
  for name in before:
    np.testing.assert_allclose(after[name], before[name], rtol=1e-6, atol=1e-6, err_msg=name)
