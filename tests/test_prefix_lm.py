"""Prefix-LMs: the suffix-only loss, split sampling, the prefix mask inside the model, QA inputs, and a
short decoder-only run whose losses fall."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tests import helpers
import vlm_jax
from vlm_jax.assembly.experiment import Experiment
from vlm_jax.data import transforms
from vlm_jax.eval import text_metrics
from vlm_jax.models import prefix_lm
from vlm_jax.objectives.base import next_token_loss as suffix_loss
from vlm_jax.objectives.prefix_lm import sample_prefix_len
from vlm_jax.train import trainer

PREFIXLM_TINY = helpers.PREFIXLM_TINY


def test_suffix_loss_is_cross_entropy_on_suffix_tokens_only():
  rng = np.random.default_rng(0)
  tokens = np.array([[2, 5, 6, 7, 3, 0], [2, 8, 9, 3, 0, 0]])
  prefix = np.array([3, 1])
  logits = rng.normal(size=(2, 6, 12)).astype(np.float32)
  loss, _, count = suffix_loss(jnp.asarray(logits), jnp.asarray(tokens), jnp.asarray(prefix))
  expected = []
  for b in range(2):
    for j in range(prefix[b], 6):  # target positions in the suffix
      if tokens[b, j]:
        z = logits[b, j - 1] - logits[b, j - 1].max()
        expected.append(np.log(np.exp(z).sum()) - z[tokens[b, j]])
  np.testing.assert_allclose(loss, np.mean(expected), rtol=1e-5)
  assert count == len(expected) == 2 + 3
  # Logits that predict prefix tokens or padding do not matter.
  grad = jax.grad(lambda l: suffix_loss(l, jnp.asarray(tokens), jnp.asarray(prefix))[0])(
    jnp.asarray(logits)
  )
  assert np.all(np.asarray(grad)[0, :2] == 0) and np.all(np.asarray(grad)[0, 4:] == 0)
  assert np.all(np.asarray(grad)[1, 3:] == 0) and np.any(np.asarray(grad)[0, 2] != 0)


def test_sampled_split_points_stay_in_bounds():
  tokens = jnp.asarray(
    np.array([[2, 5, 6, 7, 8, 9, 10, 11, 3, 0]] * 500 + [[2, 5, 3, 0, 0, 0, 0, 0, 0, 0]] * 500)
  )
  p = np.asarray(sample_prefix_len(jax.random.PRNGKey(0), tokens, 0, 0.0, 0.5))
  assert (
    p.min() == 1 and p[:500].max() == 4 and p[500:].max() == 1
  )  # 7 inner tokens: 1 + floor(u * 7), u < 0.5
  assert set(np.unique(p[:500])) == {1, 2, 3, 4}
  p = np.asarray(sample_prefix_len(jax.random.PRNGKey(0), tokens, 0, 1.0, 1.0))
  assert np.all(p[:500] == 8) and np.all(
    p[500:] == 2
  )  # never the whole sequence: one token stays to predict


def micro_prefix_lm():
  return prefix_lm.PrefixLM(
    image=dict(width=32, depth=1, num_heads=2, mlp_dim=64, patch_size=8, image_size=16),
    text=dict(vocab_size=16, width=32, depth=2, num_heads=2, mlp_dim=64, max_len=8, pad_id=0),
  )


def test_prefix_tokens_see_each_other_and_the_image_but_never_the_suffix():
  model = micro_prefix_lm()
  images = jax.random.normal(jax.random.PRNGKey(0), (1, 16, 16, 3))
  tokens = jnp.array([[2, 5, 6, 7, 8, 9, 3, 0]])
  params = model.init(jax.random.PRNGKey(1), images, tokens)["params"]
  out = lambda t, im=images, p=3: np.asarray(
    model.apply({"params": params}, im, t, jnp.array([p]), method="prefix_lm_logits")
  )
  base = out(tokens)
  later_suffix = out(tokens.at[0, 5].set(11))  # a suffix token changes
  np.testing.assert_allclose(later_suffix[0, :5], base[0, :5], atol=1e-6)  # nothing before it moves
  assert not np.allclose(later_suffix[0, 5], base[0, 5])
  later_prefix = out(tokens.at[0, 2].set(11))  # the last prefix token changes
  assert not np.allclose(
    later_prefix[0, 0], base[0, 0]
  )  # earlier prefix positions see it (bidirectional)
  causal = out(tokens.at[0, 2].set(11), p=1)  # with a 1-token prefix the text is causal
  np.testing.assert_allclose(causal[0, :2], out(tokens, p=1)[0, :2], atol=1e-6)
  other_image = out(tokens, im=-images)
  assert not np.allclose(other_image[0, 0], base[0, 0])  # the prefix sees the image
  text_only = np.asarray(
    model.apply(
      {"params": params}, images, tokens, jnp.array([3]), text_only=True, method="prefix_lm_logits"
    )
  )
  np.testing.assert_allclose(
    text_only,
    np.asarray(
      model.apply(
        {"params": params},
        -images,
        tokens,
        jnp.array([3]),
        text_only=True,
        method="prefix_lm_logits",
      )
    ),
  )


def test_question_answer_inputs():
  from vlm_jax.data import tokenizers

  tok = tokenizers.ByteTokenizer()
  pre = transforms.Preprocess(16, tok, 24)
  text, prefix = pre.question_answer("what?", "red")
  question, answer = tok.encode("what?", 24), tok.encode("red", 24)
  assert prefix == 1 + len("what?")
  assert text[:prefix].tolist() == question[:prefix].tolist()  # start token + question
  assert text[prefix : prefix + 4].tolist() == answer[1:5].tolist()  # answer + end token
  assert int(text[prefix + 3]) == tok.eos_id and np.all(text[prefix + 4 :] == tok.pad_id)
  assert pre.prompt("what?")[:prefix].tolist() == question[:prefix].tolist()
  assert np.all(pre.prompt("what?")[prefix:] == tok.pad_id)  # no end token: the answer follows
  with pytest.raises(ValueError, match="max_len"):
    transforms.Preprocess(16, tok, 4).question_answer("a long question", "x")


def test_short_decoder_only_run_learns_captions_and_answers(tmp_path):
  config = helpers.micro_config(
    PREFIXLM_TINY,
    batch_size=32,
    **{
      "train.duration": "60 steps",
      "train.log_every": "10 steps",
      "train.checkpoint_every": "0 steps",
      "optim.lr": 3e-3,
      "optim.warmup": "10 steps",
      "evals.captioning.every": "60 steps",
      "evals.captioning.limit": 32,
      "evals.vqa.every": "60 steps",
      "evals.vqa.limit": 16,
      "evals.zero_shot_likelihood.every": "60 steps",
      "evals.zero_shot_likelihood.limit": 32,
    },
  )
  final = trainer.train(config, str(tmp_path), log=lambda *a: None)
  records = list(helpers.metrics_lib.read_metrics(str(tmp_path)))
  for name in ("train/prefix_lm_loss", "train/vqa_loss"):
    losses = [r[name] for r in records if name in r]
    assert losses[-1] < 0.7 * losses[0], (name, losses)
  for key in (
    "eval/captioning/bleu4",
    "eval/captioning/cider",
    "eval/vqa/accuracy",
    "eval/vqa/count_acc",
    "eval/zero_shot_likelihood/shape_top1",
  ):
    assert key in final, sorted(final)
  # The public API on the workdir answers and captions as the evaluators did.
  m = vlm_jax.load(str(tmp_path))
  test = Experiment(config, log=lambda *a: None).data.test
  rows = [(i, q, a) for i in range(16) for q, a in zip(test[i]["questions"], test[i]["answers"])]
  pixels = m.preprocess([test[i]["image"] for i, _, _ in rows])
  answers = m.answer(pixels, [q.decode() for _, q, _ in rows], max_answer_len=4)
  accuracy = np.mean(
    [text_metrics.vqa_accuracy(p, a.decode()) for p, (_, _, a) in zip(answers, rows)]
  )
  assert accuracy == pytest.approx(final["eval/vqa/accuracy"])
  captions = m.caption(m.preprocess([test[i]["image"] for i in range(32)]))
  scores = text_metrics.caption_scores(
    captions, [[c.decode() for c in test[i]["captions"]] for i in range(32)]
  )
  assert scores["cider"] == pytest.approx(final["eval/captioning/cider"])


@pytest.mark.recipes
def test_prefixlm_tiny_as_shipped(tmp_path):
  """The decoder-only tiny recipe (about 9 minutes): answers and captions far above chance on held-out data."""
  final = helpers.run_recipe(PREFIXLM_TINY, tmp_path)
  for kind in ("color", "shape", "count"):
    assert final[f"eval/vqa/{kind}_acc"] > 2 * final[f"eval/vqa/{kind}_chance"], final
  assert final["eval/vqa/size_acc"] > 0.75 and final["eval/captioning/color_mention_acc"] > 3 / 8
  assert final["eval/captioning/cider"] > 1.0
  for name in ("prefix_lm_loss", "vqa_loss"):
    assert helpers.losses(tmp_path, name)[-1] < 0.3 * helpers.losses(tmp_path, name)[0]


@pytest.mark.recipes
def test_simvlm_tiny_as_shipped(tmp_path):
  """The SimVLM tiny recipe (about 7 minutes): captions name colour and shape far above chance."""
  final = helpers.run_recipe(helpers.SIMVLM_TINY, tmp_path)
  assert (
    final["eval/captioning/color_mention_acc"] > 3 / 8
    and final["eval/captioning/shape_mention_acc"] > 3 / 8
  )
  assert (
    final["eval/zero_shot_likelihood/color_top1"] > 2 / 8 and final["eval/captioning/cider"] > 1.0
  )
  for name in ("prefix_lm_loss", "text_lm_loss"):
    assert helpers.losses(tmp_path, name)[-1] < 0.5 * helpers.losses(tmp_path, name)[0]


def test_projector_kinds():
  images, tokens = jnp.zeros((1, 16, 16, 3)), jnp.ones((1, 8), jnp.int32)
  shapes = {}
  for kind in ("linear", "mlp"):
    model = prefix_lm.PrefixLM(
      image=dict(width=24, depth=1, num_heads=2, mlp_dim=48, patch_size=8, image_size=16),
      text=dict(vocab_size=16, width=32, depth=1, num_heads=2, mlp_dim=64, max_len=8),
      projector_kind=kind,
    )
    params = nn.unbox(model.init(jax.random.PRNGKey(0), images, tokens)["params"])
    shapes[kind] = jax.tree.map(lambda x: x.shape, params["projector"])
  assert shapes["linear"] == {"fc1": {"kernel": (24, 32), "bias": (32,)}}
  assert shapes["mlp"] == {
    "fc1": {"kernel": (24, 32), "bias": (32,)},
    "fc2": {"kernel": (32, 32), "bias": (32,)},
  }
  with pytest.raises(ValueError, match="model.projector=.* is not one of"):
    prefix_lm.PrefixLM(
      image=dict(width=24, depth=1, num_heads=2, mlp_dim=48, patch_size=8, image_size=16),
      text=dict(vocab_size=16, width=32, depth=1, num_heads=2, mlp_dim=64, max_len=8),
      projector_kind="conv",
    ).init(jax.random.PRNGKey(0), images, tokens)
