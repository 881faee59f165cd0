"""Caption metrics (BLEU, ROUGE-L, CIDEr-D) and VQA accuracy against published and reference values."""

import json
import os

import numpy as np
import pytest

from vlm_jax.eval import text_metrics as tm

# Reference values: pycocoevalcap 1.2's Bleu(4), Rouge() and Cider() on these captions, tokenized as
# `tm.tokenize` does (pip download pycocoevalcap==1.2; its scorers are pure Python).
CANDIDATES = [
  "a red circle in the top left",
  "a large blue square",
  "there is a green star at the bottom",
  "a small yellow triangle in the center of the image",
  "a purple ring",
  "an orange cross on the right",
]
REFERENCES = [
  [
    "a small red circle in the top left",
    "top left: a small red circle",
    "a red circle at the top left of the image",
  ],
  ["a large blue square in the center", "a photo of a large blue square"],
  [
    "a green star at the bottom of the image",
    "there is a large green star at the bottom",
    "bottom: a green star",
  ],
  ["a small yellow triangle in the center", "a yellow triangle in the middle of the image"],
  [
    "a large purple ring in the bottom right",
    "a purple ring at the bottom right of the image",
    "a photo of a purple ring",
  ],
  ["an orange cross on the right", "a small orange cross, on the right side"],
]
PYCOCOEVALCAP = dict(
  bleu1=0.8767100584074696,
  bleu2=0.8629027378885924,
  bleu3=0.8327437663449336,
  bleu4=0.7715641672904842,
  rouge_l=0.8471091541358872,
  cider=5.701530098542034,
)
# Degenerate candidates: repetition, no overlap, too short (brevity penalty), no 4-gram match.
HARD_CANDIDATES = ["the the the the the the the", "dog", "a blue", "a blue circle a blue circle"]
HARD_REFERENCES = [
  ["the cat is on the mat", "there is a cat on the mat"],
  ["a cat sitting"],
  ["a blue star on the left", "blue star"],
  ["a blue circle", "a big blue circle in the top right corner of the picture"],
]
HARD_PYCOCOEVALCAP = dict(
  bleu1=0.4374999999726563,
  bleu2=0.33071891385895896,
  bleu3=0.2299103480120688,
  bleu4=3.6298976452145774e-05,
  rouge_l=0.4125471913302238,
  cider=0.7485599645251743,
)


@pytest.mark.parametrize(
  "candidates, references, expected",
  [(CANDIDATES, REFERENCES, PYCOCOEVALCAP), (HARD_CANDIDATES, HARD_REFERENCES, HARD_PYCOCOEVALCAP)],
)
def test_caption_scores_equal_pycocoevalcap(candidates, references, expected):
  scores = tm.caption_scores(candidates, references)
  for name, value in expected.items():
    assert scores[name] == pytest.approx(value, rel=1e-9, abs=1e-12), name


def test_bleu_and_rouge_reproduce_the_papers_examples():
  # Papineni et al. 2002, section 2.1: modified unigram precisions 17/18 and 2/7.
  refs = [
    "It is a guide to action that ensures that the military will forever heed Party commands.",
    "It is the guiding principle which guarantees the military forces always being under the command of "
    "the Party.",
    "It is the practical guide for the army always to heed the directions of the party.",
  ]
  candidate = "It is a guide to action which ensures that the military always obeys the commands of the party."
  assert tm.bleu([tm.tokenize(candidate)], [[tm.tokenize(r) for r in refs]], n=1)[
    0
  ] == pytest.approx(17 / 18)
  the = tm.bleu(
    [tm.tokenize("the the the the the the the")],
    [[tm.tokenize("The cat is on the mat."), tm.tokenize("There is a cat on the mat.")]],
    n=1,
  )[0]
  assert the == pytest.approx(2 / 7)
  # Lin 2004, section 3.1: LCS-based F of 3/4 and 1/2 against "police killed the gunman".
  ref = [[tm.tokenize("police killed the gunman")]]
  assert tm.rouge_l([tm.tokenize("police kill the gunman")], ref) == pytest.approx(0.75)
  assert tm.rouge_l([tm.tokenize("the gunman kill police")], ref) == pytest.approx(0.5)


def test_a_caption_identical_to_all_references_scores_top_marks_and_bad_input_is_refused():
  refs = [["a red circle in the top left"] * 2, ["a blue square"] * 2]
  scores = tm.caption_scores(["a red circle in the top left", "a blue square"], refs)
  assert scores["bleu4"] == pytest.approx(1.0) and scores["rouge_l"] == pytest.approx(1.0)
  with pytest.raises(ValueError, match="candidates"):
    tm.caption_scores(["a"], [["a"], ["b"]])
  with pytest.raises(ValueError, match="at least one reference"):
    tm.caption_scores(["a"], [[]])


def test_vqa_normalisation_and_accuracy():
  assert tm.vqa_normalize("Two") == "2"
  assert tm.vqa_normalize("The dog.") == "dog"
  assert tm.vqa_normalize("yes!") == "yes"
  assert tm.vqa_normalize("dont know") == "don't know"
  assert tm.vqa_normalize("1,000") == "1000"
  assert tm.vqa_normalize("red-orange") == "red orange"
  assert tm.vqa_normalize("3.5") == "3.5"
  assert tm.vqa_accuracy("a Red", "red") == 1.0
  assert tm.vqa_accuracy("blue", ["red"]) == 0.0
  # VQAv2: 10 humans, min(#others agreeing / 3, 1) averaged over leaving each human out.
  humans = ["red"] * 2 + ["orange"] * 8
  assert tm.vqa_accuracy("red", humans) == pytest.approx((2 * 1 / 3 + 8 * 2 / 3) / 10)
  assert tm.vqa_accuracy("red", ["red"] * 3 + ["blue"] * 7) == pytest.approx((3 * 2 / 3 + 7) / 10)
  assert tm.vqa_accuracy("two", ["2"] * 4 + ["3"] * 6) == 1.0
  assert tm.vqa_accuracy("green", humans) == 0.0


def test_tokens_and_scores_equal_pycocoevalcap_on_captions_with_hyphens_clitics_numbers_and_symbols():
  """Recorded from pycocoevalcap 1.2 (Java PTB tokenizer) by tests/fixtures/make_coco_caption_reference.py."""
  path = os.path.join(os.path.dirname(__file__), "fixtures", "coco_caption_reference.json")
  with open(path, encoding="utf-8") as f:
    reference = json.load(f)
  images = reference["images"]
  for image in images:
    assert tm.tokenize(image["candidate"]) == image["candidate_tokens"], image["candidate"]
    for text, tokens in zip(image["references"], image["reference_tokens"]):
      assert tm.tokenize(text) == tokens, text
  # "double-decker" is one word, as COCO's tokenizer has it (ROUGE-L and CIDEr-D moved with it).
  assert "double-decker" in tm.tokenize(images[0]["candidate"])
  scores = tm.caption_scores(
    [i["candidate"] for i in images], [i["references"] for i in images], per_image=True
  )
  for name, value in reference["corpus"].items():
    assert scores[name] == pytest.approx(value, rel=1e-9, abs=1e-12), name
  for name, values in reference["per_image"].items():
    np.testing.assert_allclose(scores["per_image"][name], values, rtol=1e-9, atol=1e-12)
