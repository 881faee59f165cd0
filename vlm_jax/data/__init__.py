"""Datasets registered by name: `build(data_config) -> ImageTextData`."""

from collections.abc import Sequence
import contextlib
import dataclasses
import io
import os
from typing import Any

import ml_collections
import numpy as np

from vlm_jax import storage
from vlm_jax.data import sources, streaming, synthetic
from vlm_jax.errors import ConfigError
from vlm_jax.registry import DATASETS


@dataclasses.dataclass
class ImageTextData:
  """Random-access splits of {'image', 'caption', labels...} examples (the embedded data also has
  'captions' (all references), 'questions' / 'answers' / 'question_types'), plus class names per label key."""

  description: str
  train: Any
  test: Any
  class_names: dict[str, Sequence[str]]
  tokenizer_path: str | None = None  # a SentencePiece model that goes with the data, if any
  question_types: Sequence[
    str
  ] = ()  # names of the examples' integer `question_types`, if they have questions


@DATASETS.register("embedded")
def build_embedded(config) -> ImageTextData:
  """The synthetic shapes dataset shipped with vlm_jax (built into the cache on first use)."""
  max_objects = config.get("max_objects", 1)
  sources, tokenizer_path = synthetic.load(
    config.image_size,
    seed=config.get("seed", 0),
    data_dir=config.get("data_dir") or None,
    max_objects=max_objects,
  )
  objects = f", 1-{max_objects} objects" if max_objects > 1 else ""
  return ImageTextData(
    description=(
      f"the embedded synthetic dataset (coloured shapes, {config.image_size}px{objects}, "
      f"{len(sources['train'])} train / {len(sources['test'])} test pairs)"
    ),
    train=sources["train"],
    test=sources["test"],
    class_names={
      "shape": synthetic.SHAPES,
      "color": tuple(synthetic.COLORS),
      "size": synthetic.SIZES,
      "position": synthetic.POSITIONS,
      "count": synthetic.COUNTS,
    },
    tokenizer_path=tokenizer_path,
    question_types=synthetic.QUESTION_TYPES,
  )


@DATASETS.register("prepared")
def build_prepared(config) -> ImageTextData:
  """ArrayRecord files written by `python -m vlm_jax.tools.prepare` in `data.path` (train / test splits;
  an image folder's classes become the label key `label`)."""
  path = config.get("path", "")
  if storage.is_remote(path):  # ArrayRecord's reader opens local files (random access)
    raise ConfigError(
      f"data.path {path!r}: prepared ArrayRecord data is read from local disk; copy it to the "
      "machine (gcloud storage cp -r), or stream tar shards from the bucket with data.name=shards"
    )
  if not path or not storage.exists(storage.join(path, "info.json")):
    raise ConfigError(
      f"data.path {path!r} is not a prepared dataset (no info.json); write one with "
      "python -m vlm_jax.tools.prepare --kind table|folder|shards --input ... --output DIR"
    )
  info = storage.read_json(storage.join(path, "info.json"))
  names = info.get("class_names")
  return ImageTextData(
    description=f"{info['kind']} data prepared from {info['source']} ({info['written']['train']} train / "
    f"{info['written']['test']} test)",
    train=sources.PreparedSource(os.path.join(path, "train.array_record")),
    test=sources.PreparedSource(os.path.join(path, "test.array_record")),
    class_names={"label": tuple(names)} if names else {},
  )


@DATASETS.register("shards")
def build_shards(config) -> ImageTextData:
  """Webdataset tar shards streamed in order, without a prepare step (streaming.py): data.shards (a brace
  pattern or a list of them, local paths or URLs), data.shuffle_buffer (samples), data.workers (reader
  threads per process), data.resampled, data.num_samples (only for durations in epochs). The test split is
  data.test_shards, read into memory (keep it small), or empty: then give evaluators their own `data`."""
  spec = config.get("shards", "")
  if not spec:
    raise ConfigError("data.name=shards needs data.shards, e.g. '/data/cc3m/{00000..00331}.tar'")
  urls = sources.resolve(spec)
  sources.check_exist(urls, "shard")
  test_urls = (
    sources.resolve(config.get("test_shards", "")) if config.get("test_shards", "") else []
  )
  sources.check_exist(test_urls, "test shard")
  test = [s for url in test_urls for s in sources.read_tar(url)]
  return ImageTextData(
    description=f"{len(urls)} tar shards streamed from {urls[0]}"
    + (f"..{urls[-1]}" if len(urls) > 1 else "")
    + f" ({len(test)} test pairs)",
    train=streaming.ShardStream(
      urls,
      shuffle_buffer=config.get("shuffle_buffer", 1000),
      workers=config.get("workers", 2),
      resampled=config.get("resampled", False),
      num_samples=config.get("num_samples", 0),
    ),
    test=test,
    class_names={},
  )


class FolderSource:
  """Random access to rows {'key', 'image': path, ...} as samples with the image's bytes (read when
  asked for) and a `caption` (None unless the row has one)."""

  def __init__(self, rows):
    self.rows = rows

  def __len__(self):
    return len(self.rows)

  def __getitem__(self, i):
    row = self.rows[i]
    return {"caption": None, **row, "image": storage.read_bytes(row["image"])}


@DATASETS.register("folder")
def build_folder(config) -> ImageTextData:
  """An image folder of class sub-folders read in place, for zero-shot classification and linear probes
  (label key `label`): data.path, class names from the folder names or data.classnames (a file).
  data.train_path: a second folder for the probe's training split; without it the images split by a hash
  of their key, data.test_fraction (default 0.5) of them for testing."""
  path = config.get("path", "")
  rows, names = sources.read_folder(path, config.get("classnames", ""))
  train_path = config.get("train_path", "")
  if train_path:
    train_rows, train_names = sources.read_folder(train_path, config.get("classnames", ""))
    if train_names != names:
      raise ConfigError(
        f"{train_path} and {path} have different classes: {train_names[:5]}... vs {names[:5]}..."
      )
    test_rows = rows
  else:
    fraction = config.get("test_fraction", 0.5)
    test_rows = [r for r in rows if sources.in_test_split(r["key"], fraction)]
    train_rows = [r for r in rows if not sources.in_test_split(r["key"], fraction)]
  split = (
    f"{len(train_rows)} train images from {train_path}"
    if train_path
    else f"split by a hash of the file names into {len(train_rows)} train / {len(test_rows)} test images "
    f"(data.test_fraction={config.get('test_fraction', 0.5)}; data.train_path gives a split of your own)"
  )
  return ImageTextData(
    description=f"image folder {path} ({len(names)} classes, {len(test_rows)} test images; "
    f"{split})",
    train=FolderSource(train_rows),
    test=FolderSource(test_rows),
    class_names={"label": tuple(names)},
  )


class _FieldsView:
  """A random-access view of a TFDS split as {'key', 'image', 'caption', <label keys>}."""

  def __init__(self, source, image_key: str, caption_key: str, label_keys):
    self.source, self.image_key, self.caption_key, self.label_keys = (
      source,
      image_key,
      caption_key,
      label_keys,
    )

  def __len__(self):
    return len(self.source)

  def __getitem__(self, i):
    example = self.source[i]
    # The file name where the dataset keeps it (coco_captions), as the original layouts' readers key.
    out = {
      "key": _text(example.get("image/filename", str(i))),
      "image": _field(example, self.image_key),
    }
    if self.caption_key:
      caption = _field(example, self.caption_key)
      # Several captions per image (coco_captions): the first is the caption, all are references.
      if isinstance(caption, (list, tuple)) or getattr(caption, "ndim", 0):
        out["captions"] = [_text(c) for c in caption]
        caption = caption[0] if len(caption) else None
      out["caption"] = None if caption is None else _text(caption)
    for key in self.label_keys:
      out[key] = int(example[key])
    return out


def _text(value) -> str:
  """TFDS Text as the other readers give it: str, without the stray spaces COCO's captions carry."""
  return (value.decode("utf-8") if isinstance(value, bytes) else str(value)).strip()


def _field(example, path: str):
  for part in path.split("/"):
    example = example[part]
  return example


def tfds_builder(name: str, data_dir):
  """The builder of TFDS dataset `name` in data_dir. A prepared dataset is opened from its files alone
  (its dataset_info.json), importing no builder code: coco_captions' imports TensorFlow, which vlm_jax
  does not need. Otherwise tfds.builder, whose is_prepared() then says False."""
  import tensorflow_datasets as tfds  # pylint: disable=import-outside-toplevel
  from tensorflow_datasets.core import read_only_builder  # pylint: disable=import-outside-toplevel

  try:
    # Not exported at the top level of tfds 4.9 (tfds.builder_from_files does not exist).
    return read_only_builder.builder_from_files(name, data_dir=data_dir)
  except tfds.core.DatasetNotFoundError:
    pass
  try:
    # TFDS prints a banner asking for TensorFlow when the builder code fails to import it; that is not
    # what is missing (the data is), so it is kept from the user's terminal.
    with contextlib.redirect_stdout(io.StringIO()):
      return tfds.builder(name, data_dir=data_dir)
  except ModuleNotFoundError as e:  # its code imports TensorFlow, and it is not prepared here
    raise tfds.core.DatasetNotFoundError(f"{name} is not prepared in {data_dir}") from e


@DATASETS.register("tfds")
def build_tfds(config) -> ImageTextData:
  """A TFDS dataset prepared in `data.data_dir` (TFDS's default when empty), read through its
  TensorFlow-free data-source API: data.tfds_name (e.g. 'coco_captions'), data.image_key ('image'),
  data.caption_key ('captions/text'; '' for classification data), data.train_split / data.test_split.
  Its ClassLabel features become label keys (zero-shot, linear probe)."""
  import tensorflow_datasets as tfds  # pylint: disable=import-outside-toplevel

  name = config.get("tfds_name", "")
  if not name:
    raise ConfigError("data.name=tfds needs data.tfds_name, e.g. coco_captions or cifar10")
  data_dir = config.get("data_dir", "") or None
  splits = (config.get("train_split", "train"), config.get("test_split", "test"))
  try:
    builder = tfds_builder(name, data_dir)
  except Exception as e:  # pylint: disable=broad-except  (tfds raises several kinds for an unknown name)
    raise ConfigError(f"TFDS has no dataset {name!r}: {e}") from None
  if not builder.is_prepared():
    raise ConfigError(
      f"TFDS dataset {name!r} is not prepared in {builder.data_dir}; prepare it with "
      f"`tfds build {name} --data_dir {data_dir or '~/tensorflow_datasets'}` (datasets that need a "
      "manual download say where to put the files), or set data.data_dir"
    )
  try:
    split_sources = {s: builder.as_data_source(split=s) for s in splits}
  except Exception as e:  # pylint: disable=broad-except
    raise ConfigError(
      f"TFDS dataset {name!r} has no split {e}; its splits: {', '.join(builder.info.splits)}"
    ) from None
  features = builder.info.features
  labels = {
    k: tuple(f.names) for k, f in features.items() if isinstance(f, tfds.features.ClassLabel)
  }
  image_key, caption_key = (
    config.get("image_key", "image"),
    config.get("caption_key", "captions/text"),
  )
  view = lambda s: _FieldsView(split_sources[s], image_key, caption_key, tuple(labels))
  return ImageTextData(
    description=f"TFDS {name} from {builder.data_dir} ({splits[0]} / {splits[1]})",
    train=view(splits[0]),
    test=view(splits[1]),
    class_names=labels,
  )


class Mixture:
  """Random access to a weighted mixture: item i comes from source j with probability weight_j and is a
  uniformly drawn example of it, both decided by (seed, i) alone, so the stream is deterministic and its
  position is one integer like any other source's."""

  def __init__(self, sources, weights, seed: int = 0):
    total = float(sum(weights))
    if not sources or len(sources) != len(weights) or total <= 0 or min(weights) < 0:
      raise ConfigError(
        f"a mixture needs sources with non-negative weights summing above 0, got {list(weights)}"
      )
    self.sources, self.weights, self.seed = list(sources), np.asarray(weights, float) / total, seed

  def __len__(self):
    return sum(len(s) for s in self.sources)

  def __getitem__(self, i):
    rng = np.random.default_rng([self.seed, int(i)])
    j = int(rng.choice(len(self.sources), p=self.weights))
    return self.sources[j][int(rng.integers(len(self.sources[j])))]


@DATASETS.register("mixture")
def build_mixture(config) -> ImageTextData:
  """data.sources: a list of data configs (each with its `name` and a `weight`; fields it lacks come from
  the enclosing data config). Training draws from them by weight; evaluation uses the test split and
  class names of source `data.eval_source` (default 0)."""
  specs = list(config.get("sources", None) or [])
  if not specs:
    raise ConfigError(
      "data.name=mixture needs data.sources, e.g. [dict(name='prepared', path=..., weight=0.7), ...]"
    )
  parent = {k: v for k, v in config.items() if k not in ("sources", "name")}
  built = []
  for spec in specs:
    spec = dict(spec)
    if "name" not in spec:
      raise ConfigError(f"every mixture source needs a name; got {spec}")
    sub = ml_collections.ConfigDict({**parent, **{k: v for k, v in spec.items() if k != "weight"}})
    built.append((DATASETS.get(spec["name"])(sub), float(spec.get("weight", 1.0))))
  streamed = [d.description for d, _ in built if not hasattr(d.train, "__getitem__")]
  if streamed:
    raise ConfigError(
      f"a mixture draws by random access, which streamed shards do not have ({streamed[0]}); "
      "convert them first: python -m vlm_jax.tools.prepare --kind shards --input ... --output DIR, "
      "then use dict(name='prepared', path=DIR, weight=...)"
    )
  first = built[int(config.get("eval_source", 0))][0]
  return ImageTextData(
    description="mixture of " + "; ".join(f"{w:g} x {d.description}" for d, w in built),
    train=Mixture([d.train for d, _ in built], [w for _, w in built], config.get("seed", 0)),
    test=first.test,
    class_names=first.class_names,
    tokenizer_path=next((d.tokenizer_path for d, _ in built if d.tokenizer_path), None),
    question_types=first.question_types,
  )
