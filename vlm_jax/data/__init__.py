"""Datasets registered by name: `build(data_config) -> ImageTextData`."""
import dataclasses
from typing import Any, Dict, Optional, Sequence

import json
import os

from vlm_jax.data import sources, synthetic
from vlm_jax.registry import DATASETS, ConfigError


@dataclasses.dataclass
class ImageTextData:
  """Random-access splits of {'image', 'caption', labels...} examples (the embedded data also has
  'captions' (all references), 'questions' / 'answers' / 'question_types'), plus class names per label key."""
  description: str
  train: Any
  test: Any
  class_names: Dict[str, Sequence[str]]
  tokenizer_path: Optional[str] = None   # a SentencePiece model that goes with the data, if any
  question_types: Sequence[str] = ()     # names of the examples' integer `question_types`, if they have questions


@DATASETS.register("embedded")
def build_embedded(config) -> ImageTextData:
  """The synthetic shapes dataset shipped with vlm_jax (built into the cache on first use)."""
  max_objects = config.get("max_objects", 1)
  sources, tokenizer_path = synthetic.load(config.image_size, seed=config.get("seed", 0),
                                           data_dir=config.get("data_dir") or None, max_objects=max_objects)
  objects = f", 1-{max_objects} objects" if max_objects > 1 else ""
  return ImageTextData(
      description=(f"the embedded synthetic dataset (coloured shapes, {config.image_size}px{objects}, "
                   f"{len(sources['train'])} train / {len(sources['test'])} test pairs)"),
      train=sources["train"], test=sources["test"],
      class_names={"shape": synthetic.SHAPES, "color": tuple(synthetic.COLORS), "size": synthetic.SIZES,
                   "position": synthetic.POSITIONS, "count": synthetic.COUNTS},
      tokenizer_path=tokenizer_path, question_types=synthetic.QUESTION_TYPES)


@DATASETS.register("prepared")
def build_prepared(config) -> ImageTextData:
  """ArrayRecord files written by `python -m vlm_jax.data.prepare` in `data.path` (train / test splits;
  an image folder's classes become the label key `label`)."""
  path = config.get("path", "")
  if not path or not os.path.exists(os.path.join(path, "info.json")):
    raise ConfigError(f"data.path {path!r} is not a prepared dataset (no info.json); write one with "
                      "python -m vlm_jax.data.prepare --kind table|folder|shards --input ... --output DIR")
  with open(os.path.join(path, "info.json")) as f:
    info = json.load(f)
  names = info.get("class_names")
  return ImageTextData(
      description=f"{info['kind']} data prepared from {info['source']} ({info['written']['train']} train / "
                  f"{info['written']['test']} test)",
      train=sources.PreparedSource(os.path.join(path, "train.array_record")),
      test=sources.PreparedSource(os.path.join(path, "test.array_record")),
      class_names={"label": tuple(names)} if names else {})
