"""Fast unit tests: durations, mesh parsing, optimizer groups, tokenizers, pipeline, model options."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vlm_jax import config_utils, durations
from vlm_jax.core import optim
from vlm_jax.data import pipeline, tokenizers
from vlm_jax.errors import ConfigError
from vlm_jax.models import layers, text


@pytest.mark.parametrize(
  "duration,steps",
  [
    (100, 100),
    ("100", 100),
    ("100 steps", 100),
    ("2 epochs", 250),
    ("0.5 epoch", 63),
    ("1000 examples", 125),
    ("1e3 examples", 125),
    ("0 steps", 0),
  ],
)
def test_durations_in_any_unit(duration, steps):
  assert durations.to_steps(duration, batch_size=8, dataset_size=1000) == steps


def test_epochs_need_a_dataset_size():
  with pytest.raises(ConfigError, match="dataset size is unknown"):
    durations.to_steps("1 epoch", batch_size=8)


@pytest.mark.parametrize(
  "spec,devices,sizes",
  [
    ("data:-1", 8, (8, 1, 1)),
    ("data:4,fsdp:2", 8, (4, 2, 1)),
    ("fsdp:-1,tensor:2", 8, (1, 4, 2)),
    ("", 4, (4, 1, 1)),
  ],
)
def test_mesh_specs(spec, devices, sizes):
  resolved = config_utils.resolve_mesh(spec, devices)
  assert tuple(resolved[a] for a in config_utils.MESH_AXES) == sizes


def _params():
  return {
    "tower": {
      "dense": {"kernel": jnp.ones((3, 4)), "bias": jnp.ones(4)},
      "ln": {"scale": jnp.ones(4)},
    },
    "head": {"kernel": jnp.ones((4, 2))},
    "logit_scale": jnp.ones(()),
  }


def _optim_config(**kw):
  import ml_collections  # pylint: disable=import-outside-toplevel

  base = dict(
    lr=0.1,
    warmup=0,
    schedule="constant",
    b1=0.9,
    b2=0.999,
    eps=1e-8,
    weight_decay=0.5,
    grad_clip_norm=0.0,
    frozen="",
    lr_multipliers=(),
  )
  return ml_collections.ConfigDict({**base, **kw})


def test_frozen_parameters_get_no_update_and_no_state():
  params = _params()
  tx, _ = optim.make_optimizer(
    _optim_config(frozen="tower/.*"), params, total_steps=10, warmup_steps=0
  )
  state = tx.init(params)
  grads = jax.tree.map(jnp.ones_like, params)
  updates, _ = tx.update(grads, state, params)
  assert all(np.all(u == 0) for u in jax.tree.leaves(updates["tower"]))
  assert np.all(updates["head"]["kernel"] != 0)
  state_sizes = sum(x.size for x in jax.tree.leaves(state) if hasattr(x, "size"))
  trainable = sum(
    x.size for x in jax.tree.leaves({k: v for k, v in params.items() if k != "tower"})
  )
  assert state_sizes <= 2 * trainable + 4  # adam moments for trainable params only (+ counters)


def test_weight_decay_only_on_matrices_and_lr_multipliers():
  params = _params()
  config = _optim_config(lr_multipliers=(("head/.*", 0.5),))
  tx, _ = optim.make_optimizer(config, params, total_steps=10, warmup_steps=0)
  zero_grads = jax.tree.map(jnp.zeros_like, params)
  updates, _ = tx.update(zero_grads, tx.init(params), params)
  # With zero gradients only decoupled weight decay moves parameters: -lr * wd * p for matrices.
  np.testing.assert_allclose(updates["tower"]["dense"]["kernel"], -0.1 * 0.5)
  np.testing.assert_allclose(updates["head"]["kernel"], -0.05 * 0.5)
  for vector in (
    updates["tower"]["dense"]["bias"],
    updates["tower"]["ln"]["scale"],
    updates["logit_scale"],
  ):
    np.testing.assert_array_equal(vector, 0)


def test_regex_that_matches_nothing_is_an_error():
  with pytest.raises(ConfigError, match="matches no parameter"):
    optim.make_optimizer(
      _optim_config(frozen="image_tower/.*"), _params(), total_steps=10, warmup_steps=0
    )


def test_warmup_then_cosine():
  schedule = optim.make_schedule(_optim_config(schedule="cosine"), total_steps=110, warmup_steps=10)
  np.testing.assert_allclose(
    [schedule(0), schedule(5), schedule(10), schedule(60), schedule(110)],
    [0.0, 0.05, 0.1, 0.05, 0.0],
    atol=1e-6,
  )


def test_byte_tokenizer_round_trip_and_framing():
  tok = tokenizers.ByteTokenizer()
  ids = tok.encode("a red ü", 16)
  assert ids[0] == tok.bos_id and ids[ids != tok.pad_id][-1] == tok.eos_id and len(ids) == 16
  assert tok.decode(ids) == "a red ü"
  long = tok.encode("x" * 100, 8)
  assert long[-1] == tok.eos_id  # truncation keeps the eos the text tower pools at


def test_sentencepiece_tokenizer(tmp_path):
  captions = [
    f"a {c} {s} in the {p}"
    for c in ("red", "blue")
    for s in ("circle", "star")
    for p in ("top", "left")
  ]
  path = str(tmp_path / "spm.model")
  tokenizers.train_sentencepiece(captions * 50, path, vocab_size=300)
  tok = tokenizers.SentencePieceTokenizer(path)
  ids = tok.encode("a red star in the top", 16)
  assert (tok.pad_id, tok.bos_id, tok.eos_id) == (0, 2, 3) and ids[0] == tok.bos_id
  assert tok.decode(ids) == "a red star in the top"
  assert tok.decode(tok.encode("Zebra ünïcode!", 32)) == "Zebra ünïcode!"  # byte fallback


def test_pipeline_process_rows_reassemble_global_batches_and_resume():
  source = list(range(50))
  preprocess = lambda x, rng: {"x": np.int32(x), "r": np.float32(rng.uniform())}
  one = pipeline.train_iterator(source, preprocess, global_batch=8, seed=3, num_threads=2)
  batches = [next(one) for _ in range(10)]  # crosses epoch boundaries
  parts = [
    pipeline.train_iterator(
      source, preprocess, global_batch=8, seed=3, process_index=p, process_count=2, num_threads=2
    )
    for p in range(2)
  ]
  for batch in batches[:3]:
    halves = [next(p) for p in parts]
    for key in ("x", "r"):
      np.testing.assert_array_equal(np.concatenate([h[key] for h in halves]), batch[key])
  epoch = np.concatenate([b["x"] for b in batches])[:48]
  assert len(set(epoch[:48].tolist())) == 48  # no repeats within an epoch
  resumed = pipeline.train_iterator(source, preprocess, global_batch=8, seed=3, num_threads=2)
  fresh = pipeline.train_iterator(source, preprocess, global_batch=8, seed=3, num_threads=2)
  for _ in range(4):
    next(fresh)
  resumed.set_state(fresh.get_state())
  np.testing.assert_array_equal(next(resumed)["x"], batches[4]["x"])


def _text_model(**kw):
  return text.TextTransformer(
    vocab_size=64, width=32, depth=3, num_heads=2, mlp_dim=64, max_len=8, **kw
  )


def test_text_tower_pools_at_eot_and_is_causal():
  model = _text_model()
  tokens = jnp.array([[2, 10, 11, 3, 0, 0, 0, 0]])
  params = model.init(jax.random.PRNGKey(0), tokens)["params"]
  pooled, seq = model.apply({"params": params}, tokens)
  np.testing.assert_allclose(pooled[0], seq[0, 3], rtol=1e-6)
  later = tokens.at[0, 2].set(20)
  _, seq2 = model.apply({"params": params}, later)
  np.testing.assert_allclose(
    seq2[0, :2], seq[0, :2], rtol=1e-6
  )  # earlier positions do not see later ones
  assert not np.allclose(seq2[0, 2:4], seq[0, 2:4])


def test_scan_and_remat_compute_the_same_function():
  tokens = jnp.array([[2, 10, 11, 12, 3, 0, 0, 0], [2, 5, 3, 0, 0, 0, 0, 0]])
  plain = _text_model()
  params = nn.unbox(plain.init(jax.random.PRNGKey(0), tokens)["params"])
  reference = plain.apply({"params": params}, tokens)[0]
  remat = _text_model(remat="full").apply({"params": params}, tokens)[0]
  np.testing.assert_allclose(remat, reference, rtol=1e-6)
  blocks = [params["encoder"].pop(f"block_{i}") for i in range(3)]
  params["encoder"]["blocks"] = jax.tree.map(lambda *x: jnp.stack(x), *blocks)
  scanned = _text_model(scan=True).apply({"params": params}, tokens)[0]
  np.testing.assert_allclose(scanned, reference, rtol=1e-5, atol=1e-6)


def test_attention_mask_shapes():
  valid = jnp.array([[True, True, False]])
  mask = layers.attention_mask(valid, valid, causal=True)
  assert mask.shape == (1, 1, 3, 3)
  np.testing.assert_array_equal(mask[0, 0], [[1, 0, 0], [1, 1, 0], [0, 0, 0]])


def test_every_objective_module_registers_itself_without_a_list():
  """A new objective is one file in vlm_jax/objectives/: importing the built-ins imports every module."""
  import pkgutil  # pylint: disable=import-outside-toplevel
  import sys  # pylint: disable=import-outside-toplevel

  from vlm_jax import builtins, objectives  # noqa: F401  pylint: disable=import-outside-toplevel

  names = [m.name for m in pkgutil.iter_modules(objectives.__path__)]
  assert "cappa" in names
  assert all(f"vlm_jax.objectives.{name}" in sys.modules for name in names)
