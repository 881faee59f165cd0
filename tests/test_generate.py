"""Attention masks, and decoding: greedy and beam search with a key/value cache against references."""

import itertools
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vlm_jax import generate
from vlm_jax.models import coca, layers


def reference_mask(query_blocks, key_blocks, key_valid):
  b, q, k = len(query_blocks), len(query_blocks[0]), len(key_blocks[0])
  out = np.zeros((b, 1, q, k), bool)
  for r, i, j in itertools.product(range(b), range(q), range(k)):
    out[r, 0, i, j] = key_valid[r][j] and key_blocks[r][j] <= query_blocks[r][i]
  return out


def test_block_mask_covers_causal_prefix_block_causal_and_bidirectional():
  n = 6
  valid = np.array([[1, 1, 1, 1, 1, 0], [1, 1, 1, 1, 1, 1]], bool)
  causal = np.tile(np.arange(n), (2, 1))
  mask = np.asarray(layers.block_mask(causal, causal, valid))
  np.testing.assert_array_equal(mask[1, 0], np.tril(np.ones((n, n), bool)))
  np.testing.assert_array_equal(mask, reference_mask(causal, causal, valid))
  # Prefix-LM: rows with 3 and 1 prefix tokens see their whole prefix, then causally.
  prefix = np.asarray(layers.prefix_blocks(n, np.array([3, 1])))
  np.testing.assert_array_equal(prefix, [[0, 0, 0, 1, 2, 3], [0, 1, 2, 3, 4, 5]])
  mask = np.asarray(layers.block_mask(prefix, prefix, valid))
  assert mask[0, 0, 0, 2] and not mask[0, 0, 2, 3] and mask[0, 0, 4, 3] and not mask[0, 0, 4, 5]
  assert not mask[0, 0, 3, 5]  # padding is never attended
  np.testing.assert_array_equal(mask, reference_mask(prefix, prefix, valid))
  np.testing.assert_array_equal(
    np.asarray(layers.block_mask(prefix[1:], prefix[1:], valid[1:]))[0, 0],
    np.tril(np.ones((n, n), bool)),
  )  # a 1-token prefix is plain causal
  # Block-causal (e.g. [image | question | answer]) and bidirectional.
  blocks = np.array([[0, 0, 1, 1, 2, 2]] * 2)
  np.testing.assert_array_equal(
    np.asarray(layers.block_mask(blocks, blocks, valid)), reference_mask(blocks, blocks, valid)
  )
  zeros = np.zeros((2, n), int)
  np.testing.assert_array_equal(
    np.asarray(layers.block_mask(zeros, zeros, valid))[0, 0], np.tile(valid[0], (n, 1))
  )
  # attention_mask (validity + causal flag) is the same builder.
  np.testing.assert_array_equal(
    np.asarray(layers.attention_mask(np.ones((2, n), bool), valid, True)),
    reference_mask(causal, causal, valid),
  )


def test_greedy_uncached_matches_a_step_by_step_loop():
  vocab, max_len, bos, eos = 12, 7, 1, 2
  table = jax.random.normal(jax.random.PRNGKey(3), (vocab, vocab))
  # Next-token logits depend on the whole prefix (a running sum), as a real decoder's do.
  logits_fn = lambda tokens: (
    jnp.cumsum(table[tokens], axis=1) + jnp.arange(tokens.shape[0])[:, None, None]
  )
  out = np.asarray(
    jax.jit(lambda: generate.greedy_uncached(logits_fn, 4, max_len, bos_id=bos, eos_id=eos))()
  )
  for row in range(4):
    expected = [bos]
    while len(expected) < max_len and expected[-1] != eos:
      tokens = np.zeros((4, max_len), np.int32)
      tokens[row, : len(expected)] = expected
      logits = np.array(logits_fn(tokens))[row, len(expected) - 1]
      logits[0] = -np.inf  # padding is never written
      expected.append(int(np.argmax(logits)))
    expected += [0] * (max_len - len(expected))
    assert list(out[row]) == expected


def running_sum_decoder(table):
  """A toy cached decoder: the cache holds the running sum of the embedded tokens, which are the logits."""

  def step(cache, tokens):
    cache = {"sum": cache["sum"] + table[tokens[:, -1]]}
    return cache["sum"][:, None], cache

  return step


def sequence_score(table, first_logits, seq):
  logits, total = np.asarray(first_logits, np.float64), 0.0
  for token in seq:
    z = logits - logits.max()
    total += z[token] - np.log(np.exp(z).sum())
    logits = logits + table[token]
  return total


def test_beam_search_finds_the_best_sequence_and_one_beam_is_greedy():
  vocab, steps = 4, 3
  table = np.asarray(jax.random.normal(jax.random.PRNGKey(0), (vocab, vocab)) * 2)
  first = np.asarray(jax.random.normal(jax.random.PRNGKey(1), (2, vocab)) * 2)
  step = running_sum_decoder(jnp.asarray(table))
  no_eos = dict(
    eos_id=-1, pad_id=0
  )  # fixed length: every sequence has `steps` tokens from ids 1..3
  beams = (vocab - 1) ** (steps - 1)  # enough to keep every prefix: beam search becomes exhaustive
  cache = {"sum": jnp.repeat(jnp.asarray(first), beams, axis=0)}
  tokens, scores = generate.beam_search(step, cache, cache["sum"], steps, beams=beams, **no_eos)
  for row in range(2):
    candidates = list(itertools.product(range(1, vocab), repeat=steps))
    best = max(candidates, key=lambda seq: sequence_score(table, first[row], seq))
    assert tuple(np.asarray(tokens[row])) == best
    assert float(scores[row]) == pytest.approx(sequence_score(table, first[row], best), abs=1e-4)
  # One beam is greedy.
  greedy = generate.greedy_search(
    step, {"sum": jnp.asarray(first)}, jnp.asarray(first), steps, **no_eos
  )
  one, _ = generate.beam_search(
    step, {"sum": jnp.asarray(first)}, jnp.asarray(first), steps, beams=1, **no_eos
  )
  np.testing.assert_array_equal(greedy, one)


def test_beam_search_ends_beams_at_eos_and_applies_the_length_penalty():
  # First token: eos (2) or 3, each 0.5; after a 3: 3 with 0.8, eos with 0.2.
  eos, vocab = 2, 4
  first = jnp.log(jnp.array([[1e-9, 1e-9, 0.5, 0.5]]))
  table = jnp.zeros((vocab, vocab)).at[3].set(jnp.log(jnp.array([1e-9, 1e-9, 0.2, 0.8])))

  def step(cache, tokens):
    return table[tokens[:, -1]][:, None] + 0 * cache["x"][:, None, None], cache

  cache, logits = {"x": jnp.zeros((2,))}, jnp.repeat(first, 2, 0)
  short, s_short = generate.beam_search(step, cache, logits, 3, beams=2, eos_id=eos, pad_id=0)
  long, s_long = generate.beam_search(
    step, cache, logits, 3, beams=2, eos_id=eos, pad_id=0, length_penalty=2.0
  )
  # Raw log-probabilities prefer [eos] (log 0.5 > log 0.32); with ((5 + len) / 6) ** 2 the normalised score
  # of [3, 3, 3] is log(0.32) / (8 / 6) ** 2 = -0.64 > -0.69: the longer caption wins.
  assert np.asarray(short[0]).tolist() == [2, 0, 0] and float(s_short[0]) == pytest.approx(
    np.log(0.5), abs=1e-4
  )
  assert np.asarray(long[0]).tolist() == [3, 3, 3] and float(s_long[0]) == pytest.approx(
    np.log(0.32), abs=1e-4
  )


def tiny_coca(scan=False):
  return coca.CoCa(
    image=dict(width=32, depth=1, num_heads=2, mlp_dim=64, patch_size=8, image_size=16),
    text=dict(
      vocab_size=9, width=32, depth=2, num_heads=2, mlp_dim=64, max_len=10, pad_id=0, scan=scan
    ),
    decoder=dict(depth=2, num_heads=2, mlp_dim=64),
    embed_dim=32,
    caption_queries=4,
    pool_heads=2,
  )


TOKENS = types.SimpleNamespace(bos_id=1, eos_id=2, pad_id=0)


def cached_equals_uncached(model, batch: int, seed: int = 0):
  """Random (scaled-up, so that rows differ and some end early) parameters; asserts that cached greedy
  captions equal uncached ones and returns (params, images, captions, logits_fn)."""
  images = jax.random.normal(jax.random.PRNGKey(1), (batch, 16, 16, 3))
  params = model.init(jax.random.PRNGKey(seed), images, jnp.ones((batch, 10), jnp.int32))["params"]
  params = jax.tree.map(lambda x: x * 3.0, params)
  logits_fn = lambda tokens: model.apply(
    {"params": params}, images, tokens, method="caption_logits"
  )
  uncached = np.asarray(
    jax.jit(lambda: generate.greedy_uncached(logits_fn, batch, 10, bos_id=1, eos_id=2))()
  )
  cached = np.asarray(jax.jit(generate.captioner(model, TOKENS, 10))(params, images))
  np.testing.assert_array_equal(cached, uncached)
  assert len({tuple(r) for r in cached}) > 1
  return params, images, cached, logits_fn


@pytest.mark.parametrize("scan", [False, True])
def test_cached_decoding_writes_exactly_the_tokens_of_uncached_decoding(scan):
  model = tiny_coca(scan)
  params, images, cached, logits_fn = cached_equals_uncached(model, 6, seed=int(scan))
  tok = TOKENS
  # One beam through the cache is greedy too; more beams find captions at least as likely.
  one = np.asarray(jax.jit(generate.captioner(model, tok, 10, beams=1))(params, images))
  np.testing.assert_array_equal(one, cached)
  beam = np.asarray(jax.jit(generate.captioner(model, tok, 10, beams=3))(params, images))

  def log_likelihood(tokens):
    logp = jax.nn.log_softmax(logits_fn(jnp.asarray(tokens)))
    picked = np.asarray(
      jnp.take_along_axis(logp[:, :-1], jnp.asarray(tokens)[:, 1:, None], axis=2)
    )[..., 0]
    ended = (
      np.cumsum(np.asarray(tokens)[:, :-1] == 2, axis=1) > 0
    )  # positions after eos predict nothing
    return (picked * ~ended * (np.asarray(tokens)[:, 1:] != 0)).sum(1)

  assert np.all(log_likelihood(beam) >= log_likelihood(cached) - 1e-4)


def test_a_prompt_chunk_is_prefilled_in_one_call():
  """A right-padded prompt (rows of different lengths) prefilled at once continues as token-by-token."""
  model = tiny_coca()
  images = jax.random.normal(jax.random.PRNGKey(1), (3, 16, 16, 3))
  params = jax.tree.map(
    lambda x: x * 3.0,
    model.init(jax.random.PRNGKey(0), images, jnp.ones((3, 10), jnp.int32))["params"],
  )
  prompt = jnp.array([[1, 5, 6, 7], [1, 4, 0, 0], [1, 0, 0, 0]], jnp.int32)
  out = generate.generate(model, params, images, prompt, 6, eos_id=2, pad_id=0)
  logits_fn = lambda tokens: model.apply(
    {"params": params}, images, tokens, method="caption_logits"
  )
  full = jnp.zeros((3, 10), jnp.int32).at[:, :4].set(prompt)
  reference = np.asarray(
    generate.greedy_uncached(logits_fn, 3, 10, bos_id=1, eos_id=2, prompt=full)
  )
  for row, n in enumerate([4, 2, 1]):
    k = min(6, 10 - n)
    np.testing.assert_array_equal(np.asarray(out[row])[:k], reference[row, n : n + k])


def tiny_prefix_lm():
  from vlm_jax.models import prefix_lm

  return prefix_lm.PrefixLM(
    image=dict(width=32, depth=1, num_heads=2, mlp_dim=64, patch_size=8, image_size=16),
    text=dict(vocab_size=9, width=32, depth=2, num_heads=2, mlp_dim=64, max_len=10, pad_id=0),
  )


def tiny_simvlm():
  from vlm_jax.models import simvlm

  return simvlm.SimVLM(
    image=dict(patch_size=8, image_size=16, stem=4),
    text=dict(vocab_size=9, max_len=10, pad_id=0),
    encoder=dict(width=32, depth=2, num_heads=2, mlp_dim=64),
    decoder=dict(depth=2, num_heads=2, mlp_dim=64),
  )


@pytest.mark.parametrize("make", [tiny_prefix_lm, tiny_simvlm], ids=["prefix_lm", "simvlm"])
def test_prefix_lms_decode_with_the_cache_exactly_as_without(make):
  model = make()
  params, images, _, _ = cached_equals_uncached(model, 5)
  # A question prompt is the prefix: the cached answer equals the uncached prefix-LM continuation.
  prompt = jnp.array([[1, 5, 6], [1, 4, 0], [1, 7, 8], [1, 3, 0], [1, 6, 6]], jnp.int32)
  lengths = np.asarray((prompt != 0).sum(1))
  out = np.asarray(generate.generate(model, params, images, prompt, 5, eos_id=2, pad_id=0))
  tokens = np.zeros((5, 10), np.int32)
  tokens[:, :3] = np.asarray(prompt)
  for t in range(5):
    logits = np.array(
      model.apply(
        {"params": params},
        images,
        jnp.asarray(tokens),
        jnp.asarray(lengths),
        method="prefix_lm_logits",
      )
    )
    for row in range(5):
      write = lengths[row] + t
      done = 2 in tokens[row, lengths[row] : write]
      logits[row, write - 1, 0] = -np.inf
      tokens[row, write] = 0 if done else int(np.argmax(logits[row, write - 1]))
  for row in range(5):
    np.testing.assert_array_equal(out[row], tokens[row, lengths[row] : lengths[row] + 5])


def test_generation_never_writes_a_padded_vocabulary_id():
  """A model's vocabulary is padded past the tokenizer's (for sharding); an untrained or imported model may
  score those columns highest, and the tokenizer cannot decode them."""
  model = tiny_coca()
  images = jax.random.normal(jax.random.PRNGKey(1), (4, 16, 16, 3))
  params = model.init(jax.random.PRNGKey(0), images, jnp.ones((4, 10), jnp.int32))["params"]
  params = jax.tree.map(lambda x: x * 3.0, params)
  # Make the last two of the 9 columns win everywhere: they stand for the padding of a 7-piece tokenizer.
  params = jax.tree_util.tree_map_with_path(
    lambda path, x: x.at[..., 7:].add(100.0) if "bias" in str(path[-1]) and x.shape[-1] == 9 else x,
    params,
  )
  tok = types.SimpleNamespace(bos_id=1, eos_id=2, pad_id=0, vocab_size=7)
  unmasked = np.asarray(jax.jit(generate.captioner(model, TOKENS, 10))(params, images))
  assert (unmasked[:, 1:] >= 7).any()  # without the tokenizer's size, padded ids are written
  for beams in (1, 3):
    out = np.asarray(jax.jit(generate.captioner(model, tok, 10, beams=beams))(params, images))
    assert (out < 7).all(), out
