"""The embedded dataset's reference captions, questions/answers and the multi-object variant."""

import numpy as np

from vlm_jax.data import synthetic


def test_references_and_answers_state_the_examples_facts():
  for i in range(40):
    example = synthetic.draw_example(np.random.default_rng([0, 0, i]), 32)
    facts = {
      k: names[example[k]]
      for k, names in (
        ("shape", synthetic.SHAPES),
        ("color", list(synthetic.COLORS)),
        ("size", synthetic.SIZES),
        ("position", synthetic.POSITIONS),
      )
    }
    assert example["caption"] in example["captions"] and len(example["captions"]) == len(
      synthetic.TEMPLATES
    )
    for caption in example["captions"]:
      assert facts["shape"] in caption and facts["color"] in caption
    answers = dict(zip(example["question_types"], example["answers"]))
    assert answers == {**facts, "count": "1"}


def test_the_default_draws_are_unchanged_and_the_variant_counts_its_shapes():
  # Version 1.0.0 drew (shape, colour, size, position, background, radius, ...) in this order; the first
  # example of the training split was, and stays, this one.
  first = synthetic.draw_example(np.random.default_rng([0, 0, 0]), 64)
  rng = np.random.default_rng([0, 0, 0])
  shape, color, size, position = (int(rng.integers(n)) for n in (8, 8, 2, 9))
  assert (first["shape"], first["color"], first["size"], first["position"]) == (
    shape,
    color,
    size,
    position,
  )
  counts, foreground = [], {1: [], 2: [], 3: []}
  for i in range(90):
    example = synthetic.draw_example(np.random.default_rng([0, 0, i]), 48, max_objects=3)
    count = example["count"] + 1
    counts.append(count)
    answers = dict(zip(example["question_types"], example["answers"]))
    assert answers["count"] == str(count)
    assert ("position" in answers) == (count == 1)  # which copy's position? not asked
    if count > 1:
      assert synthetic.NUMBER_WORDS[count - 1] in example["caption"]
      assert synthetic.plural(synthetic.SHAPES[example["shape"]]) in example["caption"]
    image = np.asarray(example["image"], np.float32)
    if example["size"] == 0:
      foreground[count].append(float((np.abs(image - image[0, 0]).sum(-1) > 60).mean()))
  assert set(counts) == {1, 2, 3}
  # The image shows as many copies as the answer says: small shapes cover about count x one shape's pixels.
  one, two, three = (np.mean(foreground[c]) for c in (1, 2, 3))
  assert 1.6 < two / one < 2.4 and 2.4 < three / one < 3.6, (one, two, three)
