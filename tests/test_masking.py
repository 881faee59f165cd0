"""Masking statistics (rates, 80/10/10, specials never masked, whole words) and hard-negative mining."""

import jax
import jax.numpy as jnp
import numpy as np

from vlm_jax.data import tokenizers
from vlm_jax.objectives import masking
from vlm_jax.objectives.matching import choose_negatives

SPECIAL = (0, 1, 2, 3)  # pad, bos, eos, mask


def _tokens(batch=512, length=32, vocab=100, seed=0):
  rng = np.random.default_rng(seed)
  tokens = rng.integers(4, vocab, size=(batch, length)).astype(np.int32)
  lengths = rng.integers(3, length, size=batch)
  tokens[:, 0] = 1
  for row, n in enumerate(lengths):
    tokens[row, n] = 2
    tokens[row, n + 1 :] = 0
  return tokens


def test_token_masking_rates_and_80_10_10():
  tokens = np.concatenate(
    [_tokens(seed=k) for k in range(4)]
  )  # ~33k candidates: rate within +-0.006 at 3 sigma
  masked, selected = jax.jit(
    lambda t: masking.mask_tokens(
      jax.random.PRNGKey(1), t, rate=0.15, mask_id=3, vocab_size=100, special_ids=SPECIAL
    )
  )(tokens)
  masked, selected = np.asarray(masked), np.asarray(selected)
  candidates = tokens >= 4
  assert not selected[~candidates].any()  # pad/bos/eos never selected
  np.testing.assert_array_equal(masked[~selected], tokens[~selected])
  rate = selected.sum() / candidates.sum()
  assert abs(rate - 0.15) < 0.01, rate
  n = selected.sum()
  as_mask = (masked[selected] == 3).sum() / n
  unchanged = (masked[selected] == tokens[selected]).sum() / n
  randomised = 1 - as_mask - unchanged
  assert abs(as_mask - 0.8) < 0.02 and abs(unchanged - 0.1) < 0.02 and abs(randomised - 0.1) < 0.02
  assert not np.isin(
    masked[selected & (masked != 3)], (0, 1, 2)
  ).any()  # random tokens are never specials


def test_masking_is_the_same_on_any_mesh():
  tokens = _tokens(batch=64)
  fn = jax.jit(
    lambda t: masking.mask_tokens(
      jax.random.PRNGKey(7), t, rate=0.15, mask_id=3, vocab_size=100, special_ids=SPECIAL
    )
  )
  single = np.asarray(fn(tokens)[0])
  mesh = jax.make_mesh((8,), ("data",), axis_types=(jax.sharding.AxisType.Auto,))
  sharded = jax.device_put(
    tokens, jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("data"))
  )
  np.testing.assert_array_equal(np.asarray(fn(sharded)[0]), single)


def test_whole_word_masking_selects_words_together():
  tok = tokenizers.ByteTokenizer()
  texts = ["a large red circle at the top left of the image"] * 256
  tokens = tok.encode_batch(texts, 64)
  word_start = np.stack([tok.word_starts(t) for t in tokens])
  _, selected = masking.mask_tokens(
    jax.random.PRNGKey(1),
    jnp.asarray(tokens),
    rate=0.15,
    mask_id=tok.mask_id,
    vocab_size=tok.vocab_size,
    special_ids=(0, 1, 2, 3),
    word_start=jnp.asarray(word_start),
  )
  selected = np.asarray(selected)
  space = tokens == ord(" ") + 4
  words_seen = 0
  for row in range(len(tokens)):
    starts = np.flatnonzero(word_start[row] & (tokens[row] > 3) & ~space[row])
    for start in starts:
      end = start
      while end + 1 < len(tokens[row]) and tokens[row][end + 1] > 3 and not space[row][end + 1]:
        end += 1
      word = selected[row, start : end + 1]
      assert word.all() or not word.any()  # all letters of a word or none
      words_seen += word.all()
  assert words_seen > 0


def test_hard_negative_is_the_best_scoring_non_matching_image():
  rng = np.random.default_rng(0)
  scores = rng.normal(size=(6, 6)).astype(np.float32)
  np.fill_diagonal(scores, 10.0)  # the positive always scores highest
  same_text = np.eye(6, dtype=bool)
  same_text[1, 4] = same_text[4, 1] = True  # captions 1 and 4 are identical: image 4 matches text 1
  scores[1, 4] = 9.0
  index, hard = choose_negatives(jax.random.PRNGKey(0), scores, same_text, mode="hard")
  index = np.asarray(index)
  for i in range(6):
    allowed = [j for j in range(6) if not same_text[i, j]]
    assert index[i] == max(allowed, key=lambda j: scores[i, j])
  assert np.asarray(hard).all()
  # Random negatives are never a match either, and spread over the allowed images.
  picks = np.stack(
    [
      np.asarray(choose_negatives(jax.random.PRNGKey(k), scores, same_text, mode="random")[0])
      for k in range(200)
    ]
  )
  assert not same_text[np.arange(6)[None], picks].any()
  assert len(set(picks[:, 0])) == 5
  mixed_hard = np.mean(
    [
      np.asarray(
        choose_negatives(jax.random.PRNGKey(k), scores, same_text, mode="mixed", hard_fraction=0.3)[
          1
        ]
      ).mean()
      for k in range(200)
    ]
  )
  assert abs(mixed_hard - 0.3) < 0.05
