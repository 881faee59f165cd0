"""LiT: a tower initialised from a checkpoint (here a converted HF CLIP) and locked."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tests import helpers
from vlm_jax import convert
from vlm_jax.assembly.experiment import Experiment, check_config
from vlm_jax.core import optim
from vlm_jax.errors import ConfigError
from vlm_jax.models import two_tower
from vlm_jax.train import trainer

pytest.importorskip("transformers")


def test_lit_from_a_converted_checkpoint_keeps_the_image_tower_fixed(tmp_path):
  from tests.test_convert import make_hf_clip

  (tmp_path / "hf").mkdir()
  make_hf_clip(str(tmp_path / "hf"))
  convert.convert(
    "hf_clip", str(tmp_path / "hf"), str(tmp_path / "pretrained"), log=lambda *a: None
  )
  source = helpers.load_params(tmp_path / "pretrained")
  config = helpers.micro_config(
    helpers.LIT_TINY,
    **{
      "init_from.workdir": str(tmp_path / "pretrained"),
      "train.duration": "4 steps",
      "train.checkpoint_every": "2 steps",
    },
  )
  exp = Experiment(config, log=lambda *a: None)
  # No optimizer state for the locked tower; Adam moments for the text tower.
  opt_state = exp.init_state(apply_init_from=False).opt_state
  state_paths = [optim.path_str(p) for p, _ in jax.tree_util.tree_leaves_with_path(opt_state)]
  assert not [p for p in state_paths if "image_" in p]
  assert [p for p in state_paths if "text_encoder" in p]
  trainer.train(config, str(tmp_path / "lit"), log=lambda *a: None)
  before = helpers.load_params(tmp_path / "lit", step=2)
  after = helpers.load_params(tmp_path / "lit", step=4)
  image_paths = [p for p in after if p.startswith("image_")]
  assert image_paths
  for (
    path
  ) in image_paths:  # loaded from the converted model, and bit-identical after training steps
    np.testing.assert_array_equal(after[path], source[path], err_msg=path)
  changed = [p for p in after if p.startswith("text_") and not np.array_equal(after[p], before[p])]
  assert len(changed) > 10  # the text tower trains


def test_a_locked_tower_runs_in_eval_mode():
  """Dropout in a locked tower is off even in a train step; an unlocked tower with dropout is stochastic."""
  fields = dict(
    image=dict(
      width=32, depth=1, num_heads=2, mlp_dim=64, patch_size=8, image_size=16, dropout=0.5
    ),
    text=dict(vocab_size=128, width=32, depth=1, num_heads=2, mlp_dim=64, max_len=8, dropout=0.5),
    embed_dim=16,
  )
  images, tokens = jnp.ones((2, 16, 16, 3)), jnp.ones((2, 8), jnp.int32)
  outputs = {}
  for locked in ((), ("image",)):
    model = two_tower.TwoTower(**fields, locked=locked)
    params = model.init(jax.random.PRNGKey(0), images, tokens)
    outputs[locked] = [
      model.apply(params, images, tokens, train=True, rngs={"dropout": jax.random.PRNGKey(i)})[
        "image_emb"
      ]
      for i in range(2)
    ]
  assert not np.allclose(*outputs[()])
  np.testing.assert_array_equal(*outputs[("image",)])


def test_locking_needs_a_checkpoint_and_a_real_workdir(tmp_path):
  with pytest.raises(ConfigError, match="init_from.workdir is empty"):
    check_config(helpers.micro_config(helpers.LIT_TINY))
  with pytest.raises(ConfigError, match="has no checkpoints/ folder"):
    check_config(helpers.micro_config(helpers.LIT_TINY, **{"init_from.workdir": str(tmp_path)}))


def test_scanned_and_unrolled_runs_start_from_each_others_checkpoints(tmp_path):
  """A converted checkpoint's layers are unrolled (`block_i`); a recipe that scans them (`blocks`, with a
  layer axis) reads it laid out as its own, and the reverse: the same numbers and the same embeddings."""
  from tests.test_convert import make_hf_clip

  (tmp_path / "hf").mkdir()
  make_hf_clip(str(tmp_path / "hf"))
  convert.convert(
    "hf_clip", str(tmp_path / "hf"), str(tmp_path / "pretrained"), log=lambda *a: None
  )
  source = helpers.load_params(tmp_path / "pretrained")
  images = jax.random.uniform(jax.random.PRNGKey(1), (2, 32, 32, 3))

  def lit(scan, init_from):
    config = helpers.micro_config(
      helpers.LIT_TINY,
      **{
        "init_from.workdir": str(init_from),
        "model.scan_layers": scan,
        "train.duration": "2 steps",
        "evals": {},
      },
    )
    exp = Experiment(config, log=lambda *a: None)
    params = exp.init_state().params
    emb = exp.model.apply({"params": params}, images, method="encode_image")
    return (
      config,
      {optim.path_str(p): np.asarray(x) for p, x in jax.tree_util.tree_leaves_with_path(params)},
      emb,
    )

  config, scanned, scanned_emb = lit(True, tmp_path / "pretrained")
  stacked = [p for p in scanned if p.startswith("image_") and "/blocks/" in p]
  assert stacked
  for path in stacked:
    layers = sorted(
      (
        p
        for p in source
        if p.startswith(path.split("/blocks/")[0] + "/block_")
        and p.endswith("/" + path.split("/blocks/")[1])
      ),
      key=lambda p: int(p.split("/block_")[1].split("/")[0]),
    )
    np.testing.assert_array_equal(
      scanned[path], np.stack([source[p] for p in layers]), err_msg=path
    )
  # The reverse: a scanned run's checkpoint read by an unrolled one.
  trainer.train(config, str(tmp_path / "scanned"), log=lambda *a: None)
  trained = helpers.load_params(tmp_path / "scanned")
  _, unrolled, unrolled_emb = lit(False, tmp_path / "scanned")
  for path in [p for p in trained if p.startswith("image_") and "/blocks/" in p]:
    head, tail = path.split("/blocks/")
    for i, layer in enumerate(trained[path]):
      np.testing.assert_array_equal(unrolled[f"{head}/block_{i}/{tail}"], layer)
  # The locked image tower went through both layouts: the converted model's embeddings, either way.
  _, _, source_emb = lit(False, tmp_path / "pretrained")
  np.testing.assert_allclose(scanned_emb, source_emb, atol=1e-5)
  np.testing.assert_allclose(unrolled_emb, source_emb, atol=1e-5)
