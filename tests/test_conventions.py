"""The training conventions a recipe names, each against its reference's formula: weight decay coupled to
the learning rate or not, which parameters decay, where warmup starts, clipping over trainable gradients,
the logit-scale clamp, token-loss normalisation, open_clip's crop and CLIP BPE's padding."""

import math

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from tests import helpers
from vlm_jax import models
from vlm_jax.assembly.experiment import Experiment
from vlm_jax.core import optim
from vlm_jax.data import tokenizers, transforms
from vlm_jax.errors import ConfigError
from vlm_jax.objectives.base import token_cross_entropy


def _params():
  return {
    "tower": {
      "attn": {
        "query": {"kernel": jnp.ones((4, 2, 2)), "bias": jnp.ones((2, 2))}
      },  # [heads, head_dim]
      "ln_1": {"scale": jnp.ones(4), "bias": jnp.ones(4)},
      "pos_embed": jnp.ones((3, 4)),
      "cls_token": jnp.ones(4),
      "token_embed": {"embedding": jnp.ones((5, 4))},
    },
    "logit_scale": jnp.ones(()),
  }


def _config(**kw):
  base = dict(
    name="adamw",
    lr=0.1,
    warmup=0,
    schedule="constant",
    b1=0.9,
    b2=0.999,
    eps=1e-8,
    weight_decay=0.5,
    weight_decay_mode="lr_coupled",
    decay_mask="open_clip",
    grad_clip_norm=0.0,
    frozen="",
    lr_multipliers=(),
  )
  return ml_collections.ConfigDict({**base, **kw})


def _decayed(rule):
  mask = optim.decay_mask(rule, _params())
  return sorted(
    p for p, m in zip(jax.tree.leaves(optim.param_paths(mask)), jax.tree.leaves(mask)) if m
  )


def test_decay_masks_follow_their_references():
  # open_clip_train/main.py: exclude p.ndim < 2 or "bn"/"ln"/"bias"/"logit_scale" in the name. A bias
  # stored as [heads, head_dim] has 2 dimensions and still does not decay.
  assert _decayed("open_clip") == [
    "tower/attn/query/kernel",
    "tower/pos_embed",
    "tower/token_embed/embedding",
  ]
  # big_vision/optax.py: `.*/kernel$` only (no embeddings, position tables, biases or norms).
  assert _decayed("big_vision") == ["tower/attn/query/kernel"]
  # BERT-era `no_decay` lists (ViLT, the HF Trainer): everything but biases and LayerNorms.
  assert _decayed("transformers") == [
    "logit_scale",
    "tower/attn/query/kernel",
    "tower/cls_token",
    "tower/pos_embed",
    "tower/token_embed/embedding",
  ]
  assert len(_decayed("all")) == 8
  assert _decayed("tower/pos_embed") == ["tower/pos_embed"]
  with pytest.raises(ConfigError, match="matches no parameter path"):
    _decayed("image_tower/.*")


def _decay_only_update(config, step_count=0):
  """The update of one step with zero gradients: only the weight decay moves parameters."""
  params = _params()
  tx, schedule = optim.make_optimizer(config, params, total_steps=100, warmup_steps=10)
  state = tx.init(params)
  zero = jax.tree.map(jnp.zeros_like, params)
  for _ in range(step_count):
    _, state = tx.update(zero, state, params)
  updates, _ = tx.update(zero, state, params)
  return updates, schedule


def test_lr_coupled_decay_is_lr_times_wd():
  """optax.adamw / PyTorch AdamW: -lr(t) * wd * p, here at step 5 of a 10-step warmup from 0."""
  config = _config(schedule="cosine", warmup_from="zero", decay_mask="big_vision")
  updates, schedule = _decay_only_update(config, step_count=5)
  lr = float(schedule(5))
  assert lr == pytest.approx(0.05)
  np.testing.assert_allclose(updates["tower"]["attn"]["query"]["kernel"], -lr * 0.5, rtol=1e-6)
  np.testing.assert_array_equal(updates["tower"]["pos_embed"], 0)


def test_decoupled_decay_is_wd_times_the_unit_schedule_not_times_lr():
  """big_vision: -wd * schedule(t) / peak * p (scale(lr) comes before add_decayed_weights, the schedule
  with peak 1 after); an lr multiplier scales the gradient step, not the decay."""
  config = _config(
    schedule="cosine",
    warmup_from="zero",
    weight_decay=1e-4,
    weight_decay_mode="decoupled",
    decay_mask="big_vision",
    lr_multipliers=(("tower/attn/.*", 0.1),),
  )
  updates, schedule = _decay_only_update(config, step_count=5)
  unit = float(schedule(5)) / 0.1  # 0.5: halfway through the warmup
  np.testing.assert_allclose(updates["tower"]["attn"]["query"]["kernel"], -1e-4 * unit, rtol=1e-6)
  for leaf in jax.tree.leaves({k: v for k, v in updates["tower"].items() if k != "attn"}):
    np.testing.assert_array_equal(leaf, 0)


def test_warmup_from_zero_or_from_one_step():
  zero = optim.make_schedule(_config(schedule="cosine", warmup_from="zero"), 110, 10)
  one = optim.make_schedule(_config(schedule="cosine", warmup_from="one_step"), 110, 10)
  # open_clip_train/scheduler.py: _warmup_lr = base_lr * (step + 1) / warmup_length, then
  # 0.5 * (1 + cos(pi * e / es)) * base_lr with e = step - warmup, es = steps - warmup.
  reference = lambda s: (
    0.1 * (s + 1) / 10 if s < 10 else 0.5 * (1 + math.cos(math.pi * (s - 10) / 100)) * 0.1
  )
  np.testing.assert_allclose(
    [one(s) for s in range(0, 110, 7)], [reference(s) for s in range(0, 110, 7)], rtol=1e-5
  )
  assert float(zero(0)) == 0.0 and float(one(0)) == pytest.approx(0.01)
  np.testing.assert_allclose([zero(s) for s in (10, 60)], [one(s) for s in (10, 60)])


def test_clipping_counts_only_trainable_gradients():
  """The global norm is over the parameters that train (big_vision masks the clip to the unfrozen; PyTorch's
  frozen parameters have no gradient): a frozen parameter's large gradient changes nothing."""
  params = {"a": {"kernel": jnp.ones((2, 2))}, "b": {"kernel": jnp.ones((2, 2))}}
  grads = {"a": {"kernel": jnp.full((2, 2), 0.1)}, "b": {"kernel": jnp.full((2, 2), 100.0)}}

  def first_moment(**kw):
    """Adam's first moment of `a` after one step: (1 - b1) x its clipped gradient."""
    tx, _ = optim.make_optimizer(_config(weight_decay=0.0, grad_clip_norm=1.0, **kw), params, 10, 0)
    _, state = tx.update(grads, tx.init(params), params)
    is_adam = lambda x: isinstance(x, optax.ScaleByAdamState)
    return [s for s in jax.tree.leaves(state, is_leaf=is_adam) if is_adam(s)][0].mu["a"]["kernel"]

  total = math.sqrt(4 * 0.1**2 + 4 * 100.0**2)
  np.testing.assert_allclose(first_moment(), (1 - 0.9) * 0.1 / total, rtol=1e-5)
  np.testing.assert_allclose(first_moment(frozen="b/.*"), (1 - 0.9) * 0.1, rtol=1e-5)  # 0.2 < 1


def test_unknown_conventions_are_config_errors():
  for key, value in (
    ("name", "lamb"),
    ("weight_decay_mode", "coupled"),
    ("warmup_from", "one"),
    ("decay_mask", "(unclosed"),
  ):
    with pytest.raises(ConfigError, match=f"optim.{key}"):
      optim.check_config(_config(**{key: value}))


def _two_tower(clamp):
  config = helpers.micro_config(helpers.TINY)
  with config.unlocked():
    config.model.logit_scale_clamp = clamp
  return models.build(config.model, 640)


def test_logit_scale_clamp_parameter_forward_or_none():
  over = math.log(100.0) + 0.5
  params = {"logit_scale": jnp.float32(over), "other": jnp.ones(2)}
  # open_clip: the parameter itself is clamped to [0, ln 100] after the step (and from below).
  clamp = models.after_update(_two_tower("parameter"))
  assert float(clamp(params)["logit_scale"]) == pytest.approx(math.log(100.0))
  assert float(clamp({"logit_scale": jnp.float32(-1.0)})["logit_scale"]) == 0.0
  np.testing.assert_array_equal(clamp(params)["other"], params["other"])
  assert models.after_update(_two_tower("forward")) is None
  assert models.after_update(_two_tower("none")) is None
  with pytest.raises(ValueError, match="logit_scale_clamp"):
    models.after_update(_two_tower("sometimes")) or _two_tower("sometimes").init(
      jax.random.PRNGKey(0), np.zeros((1, 32, 32, 3)), np.zeros((1, 16), np.int32)
    )


def test_per_example_normalisation_is_big_vision_weighted_softmax_xent():
  rng = np.random.default_rng(0)
  logits = rng.normal(size=(3, 5, 7)).astype(np.float32)
  targets = rng.integers(0, 7, (3, 5))
  weights = np.array([[1, 1, 1, 1, 1], [1, 0, 0, 0, 0], [1, 1, 0, 0, 0]], np.float32)
  nll = -np.take_along_axis(
    logits - np.log(np.exp(logits).sum(-1, keepdims=True)), targets[..., None], -1
  )[..., 0]
  per_example, _, _ = token_cross_entropy(logits, targets, weights, "per_example")
  per_token, _, _ = token_cross_entropy(logits, targets, weights, "per_token")
  np.testing.assert_allclose(
    per_example, ((nll * weights).sum(1) / weights.sum(1)).mean(), rtol=1e-6
  )
  np.testing.assert_allclose(per_token, (nll * weights).sum() / weights.sum(), rtol=1e-6)
  assert abs(float(per_example) - float(per_token)) > 1e-3  # the short caption weighs more


def test_random_resized_crop_box_follows_torchvision():
  """torchvision's RandomResizedCrop.get_params: area in `scale`, log-uniform aspect in `ratio`, the box
  inside the image; when ten draws cannot fit, the centred box of the nearest allowed ratio."""
  rng = np.random.default_rng(0)
  for _ in range(200):
    x, y, w, h = transforms.random_resized_crop_box(64, 48, rng, (0.9, 1.0), (3 / 4, 4 / 3))
    assert 0 <= x and x + w <= 64 and 0 <= y and y + h <= 48
    assert 0.9 * 64 * 48 * 0.93 <= w * h <= 64 * 48  # rounding of the sides
    assert 3 / 4 * 0.95 <= w / h <= 4 / 3 * 1.05
  # A 4:1 image cannot hold 90% of its area at ratio <= 4/3: the centred 4/3 box, full height.
  assert transforms.random_resized_crop_box(80, 20, rng, (0.9, 1.0), (3 / 4, 4 / 3)) == (
    (80 - 27) // 2,
    0,
    27,
    20,
  )


def test_clip_bpe_padding_is_not_masked(tmp_path):
  """CLIP's BPE pads with id 0, which is "!": a text tower masking id 0 is refused before training."""
  merges = tmp_path / "merges.txt"
  merges.write_text("#version: 0.2\nh e\n")
  tokenizer = tokenizers.get_tokenizer("clip_bpe", str(merges), "")
  assert tokenizer.pad_id == 0 and tokenizer.decode([0]) == "!"
  config = helpers.micro_config(
    helpers.TINY, **{"data.tokenizer": "clip_bpe", "data.tokenizer_path": str(merges)}
  )
  with pytest.raises(ConfigError, match="pad_id=-1"):
    Experiment(config, devices=jax.devices()[:1], log=lambda *_: None)
  with config.unlocked():
    config.model.text.update(pad_id=-1, pool="argmax")
  Experiment(config, devices=jax.devices()[:1], log=lambda *_: None)


def test_crop_settings_from_the_command_line(monkeypatch):
  """`--config.data.augment.crop_scale=None` (which ml_collections reads as (None,)) turns the crop off; a
  range that is not two fractions is a config error before anything trains."""
  import sys  # pylint: disable=import-outside-toplevel

  from absl import flags  # pylint: disable=import-outside-toplevel
  from ml_collections import config_flags  # pylint: disable=import-outside-toplevel

  from vlm_jax.assembly import experiment  # pylint: disable=import-outside-toplevel

  def parsed(value):
    argv = ["main", "--config", helpers.TINY, f"--config.data.augment.crop_scale={value}"]
    monkeypatch.setattr(sys, "argv", argv)  # config_flags reads the overrides from sys.argv
    flag_values = flags.FlagValues()
    config_flags.DEFINE_config_file("config", None, "", flag_values=flag_values, lock_config=True)
    flag_values(argv)
    return flag_values.config

  off = parsed("None")
  assert off.data.augment.crop_scale == (None,)
  experiment.check_config(off, num_devices=1, process_count=1)
  tokenizer = tokenizers.ByteTokenizer()
  assert transforms.Preprocess.from_config(off, tokenizer, train=True).crop_scale is None
  on = parsed("(0.5, 1.0)")
  assert transforms.Preprocess.from_config(on, tokenizer, train=True).crop_scale == (0.5, 1.0)
  for bad in ("0.9", "(0.9, 1.5)", "(1.0, 0.5)"):
    with pytest.raises(ConfigError, match="crop_scale"):
      experiment.check_config(parsed(bad), num_devices=1, process_count=1)
