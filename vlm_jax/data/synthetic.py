"""The embedded synthetic image-text dataset: coloured shapes at positions, with compositional captions.

Built on first use as a TFDS dataset in ArrayRecord format (no TensorFlow needed) in a cache directory,
deterministically from a seed, so every machine gets the same bytes. Each image shows one shape; its
caption names the shape, colour, size and position, and the same facts are stored as class labels for
zero-shot classification and probes. Every example also carries all its reference captions (one per
template, for BLEU / ROUGE-L / CIDEr) and question/answer pairs about colour, shape, size, count and
position (for VQA).

`max_objects` > 1 (`data.max_objects`) builds a variant in which an image shows 1..max_objects copies of
the same shape (same colour and size) in different cells, so that counting questions mean something;
`position` is then the first copy's cell, and group captions do not mention positions.
"""

import fcntl
import os

import numpy as np
from PIL import Image, ImageDraw
import tensorflow_datasets as tfds

from vlm_jax import storage
from vlm_jax.data import tokenizers
from vlm_jax.errors import ConfigError

SHAPES = ("circle", "square", "triangle", "diamond", "cross", "star", "hexagon", "ring")
COLORS = {
  "red": (220, 40, 40),
  "green": (40, 180, 60),
  "blue": (50, 90, 235),
  "yellow": (240, 220, 50),
  "purple": (150, 60, 200),
  "orange": (250, 140, 30),
  "white": (240, 240, 240),
  "cyan": (50, 210, 220),
}
SIZES = ("small", "large")
POSITIONS = (
  "top left",
  "top",
  "top right",
  "left",
  "center",
  "right",
  "bottom left",
  "bottom",
  "bottom right",
)
TEMPLATES = (
  "a {size} {color} {shape} in the {position}",
  "a {color} {shape} in the {position}",
  "a photo of a {size} {color} {shape}",
  "there is a {color} {shape} at the {position} of the image",
  "{position}: a {size} {color} {shape}",
  "a {size} {shape}, coloured {color}, in the {position}",
)
GROUP_TEMPLATES = (
  "{count} {size} {color} {shapes}",
  "a photo of {count} {color} {shapes}",
  "there are {count} {color} {shapes} in the image",
  "{count} {size} {shapes}, coloured {color}",
)
COUNTS = ("1", "2", "3")  # answers as digits: what the VQA normalisation makes of number words
NUMBER_WORDS = ("one", "two", "three")
QUESTION_TYPES = ("color", "shape", "size", "count", "position")
SPLITS = {"train": (50_000, 0), "test": (2_000, 1)}  # split: (examples, seed offset)
# 2.0.0 added reference captions, questions/answers and `count`; images and captions are those of 1.0.0.
VERSION = "2.0.0"


def _polygon(cx, cy, r, n, rotation=-np.pi / 2, inner=None):
  points = []
  for i in range(n * (2 if inner else 1)):
    radius = inner if inner and i % 2 else r
    angle = rotation + i * np.pi / (n if inner else n / 2)
    points.append((cx + radius * np.cos(angle), cy + radius * np.sin(angle)))
  return points


def _draw_shape(draw, name, cx, cy, r, fill, background):
  box = (cx - r, cy - r, cx + r, cy + r)
  if name == "circle":
    draw.ellipse(box, fill=fill)
  elif name == "square":
    draw.rectangle((cx - 0.85 * r, cy - 0.85 * r, cx + 0.85 * r, cy + 0.85 * r), fill=fill)
  elif name == "triangle":
    draw.polygon(_polygon(cx, cy + 0.15 * r, r, 3), fill=fill)
  elif name == "diamond":
    draw.polygon([(cx, cy - r), (cx + 0.7 * r, cy), (cx, cy + r), (cx - 0.7 * r, cy)], fill=fill)
  elif name == "cross":
    w = 0.33 * r
    draw.rectangle((cx - r, cy - w, cx + r, cy + w), fill=fill)
    draw.rectangle((cx - w, cy - r, cx + w, cy + r), fill=fill)
  elif name == "star":
    draw.polygon(_polygon(cx, cy, r, 5, inner=0.45 * r), fill=fill)
  elif name == "hexagon":
    draw.polygon(_polygon(cx, cy, r, 6, rotation=0.0), fill=fill)
  elif name == "ring":
    draw.ellipse(box, fill=fill)
    draw.ellipse((cx - 0.55 * r, cy - 0.55 * r, cx + 0.55 * r, cy + 0.55 * r), fill=background)


def plural(shape: str) -> str:
  return shape + ("es" if shape.endswith("s") else "s")


def questions(facts: dict, count: int) -> list:
  """[(question, answer, type)] about an image with `count` copies of the shape described by `facts`."""
  noun = facts["shape"] if count == 1 else plural(facts["shape"])
  qa = [
    (f"what color is the {noun}?", facts["color"], "color"),
    ("what shape is in the image?", facts["shape"], "shape"),
    (f"is the {facts['color']} {noun} small or large?", facts["size"], "size"),
    (f"how many {facts['color']} shapes are there?", COUNTS[count - 1], "count"),
  ]
  if count == 1:
    qa.append((f"where is the {facts['color']} {noun}?", facts["position"], "position"))
  return qa


def draw_example(rng: np.random.Generator, image_size: int, max_objects: int = 1) -> dict:
  """One example's image and facts, drawn from `rng`. With max_objects=1 the draws (and so the images and
  captions) are those of dataset version 1.0.0."""
  shape, color = rng.integers(len(SHAPES)), rng.integers(len(COLORS))
  size, position = rng.integers(len(SIZES)), rng.integers(len(POSITIONS))
  count = int(rng.integers(1, max_objects + 1)) if max_objects > 1 else 1
  cells = [int(position)]
  if count > 1:
    cells += [
      int(c) for c in rng.choice([c for c in range(9) if c != position], count - 1, replace=False)
    ]
  background = tuple(int(c) for c in rng.integers(0, 90, size=3))
  # Drawn at 2x and downsampled, so edges are anti-aliased at any size.
  s = image_size * 2
  image = Image.new("RGB", (s, s), background)
  draw = ImageDraw.Draw(image)
  cell = s / 3
  fill = None
  for index in cells:
    row, col = divmod(index, 3)
    r = cell * (0.28 if size == 0 else 0.45) * rng.uniform(0.9, 1.1)
    cx = cell * (col + 0.5) + rng.uniform(-0.1, 0.1) * cell
    cy = cell * (row + 0.5) + rng.uniform(-0.1, 0.1) * cell
    if fill is None:
      fill = tuple(
        int(np.clip(c + rng.integers(-20, 21), 0, 255)) for c in list(COLORS.values())[color]
      )
    _draw_shape(draw, SHAPES[shape], cx, cy, r, fill, background)
  image = image.resize((image_size, image_size), Image.Resampling.BOX)
  facts = dict(
    shape=SHAPES[shape], color=list(COLORS)[color], size=SIZES[size], position=POSITIONS[position]
  )
  if count == 1:
    references = [t.format(**facts) for t in TEMPLATES]
  else:
    references = [
      t.format(**facts, count=NUMBER_WORDS[count - 1], shapes=plural(facts["shape"]))
      for t in GROUP_TEMPLATES
    ]
  caption = references[rng.integers(len(references))]
  qa = questions(facts, count)
  return dict(
    image=image,
    caption=caption,
    captions=references,
    questions=[q for q, _, _ in qa],
    answers=[a for _, a, _ in qa],
    question_types=[t for _, _, t in qa],
    shape=int(shape),
    color=int(color),
    size=int(size),
    position=int(position),
    count=count - 1,
  )


class SyntheticShapesConfig(tfds.core.BuilderConfig):
  def __init__(self, *, image_size: int, seed: int = 0, max_objects: int = 1, **kwargs):
    suffix = f"_objects{max_objects}" if max_objects > 1 else ""
    super().__init__(name=f"{image_size}px_seed{seed}{suffix}", **kwargs)
    self.image_size = image_size
    self.seed = seed
    self.max_objects = max_objects


class SyntheticShapes(tfds.core.GeneratorBasedBuilder):
  """Coloured shapes with compositional captions (vlm_jax's embedded dataset)."""

  VERSION = tfds.core.Version(VERSION)
  BUILDER_CONFIGS = []  # one config per (image_size, seed), made by `load`

  def _info(self):
    size = self.builder_config.image_size
    return tfds.core.DatasetInfo(
      builder=self,
      description=__doc__,
      features=tfds.features.FeaturesDict(
        {
          "image": tfds.features.Image(shape=(size, size, 3)),
          "caption": tfds.features.Text(),
          "captions": tfds.features.Sequence(tfds.features.Text()),
          "questions": tfds.features.Sequence(tfds.features.Text()),
          "answers": tfds.features.Sequence(tfds.features.Text()),
          "question_types": tfds.features.Sequence(tfds.features.ClassLabel(names=QUESTION_TYPES)),
          "shape": tfds.features.ClassLabel(names=SHAPES),
          "color": tfds.features.ClassLabel(names=list(COLORS)),
          "size": tfds.features.ClassLabel(names=SIZES),
          "position": tfds.features.ClassLabel(names=POSITIONS),
          "count": tfds.features.ClassLabel(names=COUNTS),
        }
      ),
    )

  def _split_generators(self, dl_manager):
    del dl_manager
    return {split: self._generate_examples(n, offset) for split, (n, offset) in SPLITS.items()}

  def _generate_examples(self, num_examples, seed_offset):
    config = self.builder_config
    for i in range(num_examples):
      rng = np.random.default_rng([config.seed, seed_offset, i])
      yield i, draw_example(rng, config.image_size, config.max_objects)


def default_data_dir() -> str:
  return os.environ.get("VLM_JAX_DATA_DIR", os.path.expanduser("~/.cache/vlm_jax/tfds"))


TOKENIZER_FILE = "sentencepiece_v2.model"
TOKENIZER_SAMPLE = (
  5000  # captions and questions come from a small grammar; this many cover every word
)
TOKENIZER_VOCAB = (
  640  # at most: 256 byte pieces + specials + all the merges that make every word one piece
)


def load(
  image_size: int, seed: int = 0, data_dir: str | None = None, log=print, max_objects: int = 1
):
  """Returns ({split: random-access source}, tokenizer model path), building both on first use.

  The build takes about 20 s at 64 px. The tokenizer is a SentencePiece BPE model trained on the
  training captions, questions and answers, so they encode to a few whole-word tokens.
  """
  data_dir = data_dir or default_data_dir()
  os.makedirs(data_dir, exist_ok=True)
  if not 1 <= max_objects <= len(COUNTS):
    raise ConfigError(f"data.max_objects={max_objects} is outside 1..{len(COUNTS)}")
  # Processes sharing a cache directory build it once: the first takes the lock, the rest then find it built.
  # The builder reads the dataset's split info when it is made, so it is made under the lock too (a
  # half-written build has an empty split list).
  with open(os.path.join(data_dir, ".vlm_jax_build.lock"), "w") as lock:
    fcntl.flock(lock, fcntl.LOCK_EX)
    builder = SyntheticShapes(
      config=SyntheticShapesConfig(image_size=image_size, seed=seed, max_objects=max_objects),
      data_dir=data_dir,
      file_format="array_record",
    )
    if not builder.is_prepared():
      log(f"Building the embedded synthetic dataset ({image_size}px) in {data_dir} ...")
      tfds.disable_progress_bar()
      builder.download_and_prepare()
    sources = {split: builder.as_data_source(split=split) for split in SPLITS}
    tokenizer_path = os.path.join(builder.data_dir, TOKENIZER_FILE)
    if not os.path.exists(tokenizer_path):
      texts = []
      for i in range(TOKENIZER_SAMPLE):
        example = sources["train"][i]
        texts += [t.decode() for key in ("captions", "questions", "answers") for t in example[key]]
      tokenizers.train_sentencepiece(
        texts, tokenizer_path, vocab_size=TOKENIZER_VOCAB, hard_vocab_limit=False
      )
  return sources, tokenizer_path


def write_shards(
  output: str,
  count: int,
  *,
  per_shard: int = 1000,
  image_size: int = 256,
  seed: int = 0,
  quality: int = 90,
  log=print,
) -> list:
  """The first `count` training examples of the embedded data, drawn at `image_size` and written as
  webdataset tar shards (KEY.jpg, KEY.txt, KEY.json with the labels) plus the data's SentencePiece model:
  real JPEG decoding for the streaming path (`data.name=shards`) without downloading anything."""
  import io
  import json
  import tarfile  # pylint: disable=import-outside-toplevel,multiple-imports

  output = storage.resolve(output)
  storage.copy(load(64, seed, log=log)[1], storage.join(output, TOKENIZER_FILE))
  paths = []
  for first in range(0, count, per_shard):
    path = storage.join(output, f"{first // per_shard:05d}.tar")
    shard = io.BytesIO()
    with tarfile.open(fileobj=shard, mode="w") as tar:
      for i in range(first, min(first + per_shard, count)):
        example = draw_example(np.random.default_rng([seed, SPLITS["train"][1], i]), image_size)
        jpeg = io.BytesIO()
        example["image"].save(jpeg, format="JPEG", quality=quality)
        labels = {k: example[k] for k in ("shape", "color", "size", "position")}
        for ext, data in (
          ("jpg", jpeg.getvalue()),
          ("txt", example["caption"].encode()),
          ("json", json.dumps(labels).encode()),
        ):
          info = tarfile.TarInfo(f"{i:08d}.{ext}")
          info.size = len(data)
          tar.addfile(info, io.BytesIO(data))
    storage.write_bytes(path, shard.getvalue())
    written = (
      min(first + per_shard, count) - first
    )  # img2dataset's stats file: sizes for the loss count
    storage.write_json(
      path.replace(".tar", "_stats.json"),
      {"count": written, "successes": written, "failed_to_download": 0},
    )
    paths.append(path)
  log(f"Wrote {count} examples at {image_size}px in {len(paths)} shards to {output}")
  return paths
