"""CoCa: caption loss and a short run whose captions name what the images show."""

import numpy as np
import pytest

from tests import helpers
import vlm_jax
from vlm_jax.assembly.experiment import Experiment
from vlm_jax.eval import zero_shot
from vlm_jax.eval.captioning import first_mention
from vlm_jax.objectives.base import next_token_loss as caption_loss
from vlm_jax.train import trainer


def test_caption_loss_is_cross_entropy_on_real_targets_only():
  rng = np.random.default_rng(0)
  tokens = np.array([[1, 5, 6, 2, 0, 0], [1, 7, 2, 0, 0, 0]])
  logits = rng.normal(size=(2, 6, 10)).astype(np.float32)
  loss, accuracy, count = caption_loss(logits, tokens)
  expected = []
  for b in range(2):
    for t in range(5):
      if tokens[b, t + 1]:
        z = logits[b, t] - logits[b, t].max()
        expected.append(np.log(np.exp(z).sum()) - z[tokens[b, t + 1]])
  np.testing.assert_allclose(loss, np.mean(expected), rtol=1e-5)
  assert count == 5
  # Logits predicting padding (and the last position, which predicts nothing) do not matter.
  changed = logits.copy()
  changed[0, 3:] = 100.0
  changed[1, 2:] = -100.0
  np.testing.assert_allclose(caption_loss(changed, tokens)[0], loss, rtol=1e-6)


def test_first_mention():
  shapes = ("circle", "star", "square")
  assert first_mention("a red star next to a circle", shapes) == 1
  assert first_mention("a starry night", shapes) == -1
  assert first_mention("two red stars and a circle", shapes) == 1
  assert first_mention("three crosses", ("cross", "ring")) == 0
  positions = ("top", "top left", "left")
  assert first_mention("in the top left corner", positions) == 1  # the longer name wins a tie


@pytest.mark.ci  # a minute of training: the fast tier keeps CoCa's parity and loss checks
def test_short_coca_run_learns_to_name_colours(tmp_path):
  config = helpers.micro_config(
    helpers.COCA_TINY,
    batch_size=64,
    **{
      "train.duration": "150 steps",  # open_clip's CoCa names colours from about 120 micro steps
      "train.log_every": "15 steps",
      "train.checkpoint_every": "0 steps",
      "optim.lr": 3e-3,
      "optim.warmup": "20 steps",
      "evals.zero_shot.limit": 64,
      "evals.retrieval.limit": 64,
      "evals.captioning.limit": 128,
    },
  )
  final = trainer.train(config, str(tmp_path), log=lambda *a: None)
  losses = [
    r["train/caption_loss"]
    for r in helpers.metrics_lib.read_metrics(str(tmp_path))
    if "train/caption_loss" in r
  ]
  assert losses[-1] < 0.6 * losses[0]
  # Greedy captions name the image's colour far more often than chance (1/8).
  assert final["eval/captioning/color_mention_acc"] > 3 * final["eval/captioning/color_chance"], (
    final
  )

  # The public API on the trained workdir reproduces the evaluators from raw images and strings.
  m = vlm_jax.load(str(tmp_path))
  data = Experiment(config, log=lambda *a: None).data
  test, colours = data.test, data.class_names["color"]
  pixels = m.preprocess([test[i]["image"] for i in range(128)])
  templates = config.evals.zero_shot.templates
  prompts = m.encode_text(m.tokenize([t.format(c) for c in colours for t in templates]))
  classifier = zero_shot.class_embeddings(prompts, len(colours), len(templates))
  scores = m.encode_image(pixels[:64]) @ classifier.T
  accuracy = np.mean(np.argmax(scores, axis=1) == [test[i]["color"] for i in range(64)])
  assert (
    abs(accuracy - final["eval/zero_shot/color_top1"]) <= 1 / 64
  )  # one flip for reduction-order noise
  mentions = [
    first_mention(c, colours) == test[i]["color"] for i, c in enumerate(m.caption(pixels))
  ]
  assert abs(np.mean(mentions) - final["eval/captioning/color_mention_acc"]) <= 2 / 128
