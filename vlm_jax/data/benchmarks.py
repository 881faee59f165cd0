"""Readers for the standard evaluation sets, from where researchers keep them; nothing is downloaded.

Each is a registered dataset (`data.name`) read from `data.data_dir`: first a TFDS data dir holding the
prepared TFDS dataset (read through TFDS's TensorFlow-free data-source API), else the files in their
original layout under the same folder. Class names are the curated ones of `benchmark_names`, so every
source of a dataset has the same labels. Missing data raises `MissingDataError` naming every path searched
and how to obtain the data.

  imagenet          TFDS imagenet2012 (validation), or imagenet/val/<wnid>/*.JPEG (synset folders, as
                    ILSVRC's valprep.sh leaves them); train: TFDS train or imagenet/train/<wnid>/
  imagenet_v2       TFDS imagenet_v2 (data.variant: matched-frequency, threshold-0.7, topimages), or the
                    release's imagenetv2-<variant>-format-val/<class index>/*.jpeg
  imagenet_sketch   TFDS imagenet_sketch, or imagenet-sketch/sketch/<wnid>/*
  imagenet_a, imagenet_r  TFDS imagenet_a / imagenet_r, or imagenet-a/<wnid>/*, imagenet-r/<wnid>/*;
                    their 200 classes only (zero-shot chooses among them, as CLIP_benchmark does)
  cifar10/cifar100  TFDS cifar10/cifar100, or the python pickles cifar-10-batches-py/, cifar-100-python/
  coco_karpathy     Karpathy's coco/dataset_coco.json with the images under coco/<filepath>/<filename>, or
                    TFDS coco_captions (its test split is Karpathy's 5k)
  flickr30k_karpathy  flickr30k/dataset_flickr30k.json with the images in flickr30k/flickr30k-images/
  vqav2             vqav2/v2_OpenEnded_mscoco_val2014_questions.json + v2_mscoco_val2014_annotations.json,
                    images in coco/val2014/ (or vqav2/val2014/)
"""

import collections
import importlib.resources
import pickle

import ml_collections
import numpy as np

from vlm_jax import storage
from vlm_jax.data import FolderSource, ImageTextData, benchmark_names, build_tfds, tfds_builder
from vlm_jax.errors import ConfigError, MissingDataError
from vlm_jax.registry import DATASETS


def _missing(name: str, data_dir: str, searched, how: str):
  return MissingDataError(f"{name} is not in {data_dir}: searched {', '.join(searched)}. {how}")


class _Arrays:
  """Random access to in-memory pixel arrays and labels (CIFAR's pickles)."""

  def __init__(self, images, labels):
    self.images, self.labels = images, labels

  def __len__(self):
    return len(self.labels)

  def __getitem__(self, i):
    return {"key": str(i), "image": self.images[i], "label": int(self.labels[i]), "caption": None}


def imagenet_wnids() -> list:
  """The 1000 ImageNet-1k WordNet ids in label order (sorted), from the list TFDS ships."""
  path = importlib.resources.files("tensorflow_datasets") / "datasets/imagenet2012/labels.txt"
  return path.read_text().split()


def _tfds(name: str, data_dir: str, test_split: str, train_split: str = "train", **fields):
  """The TFDS dataset `name` if it is prepared in data_dir, else None."""
  import tensorflow_datasets as tfds  # pylint: disable=import-outside-toplevel

  try:
    if not tfds_builder(name, data_dir).is_prepared():
      return None
  # tfds_builder's answer when there are no prepared files (and no TensorFlow-free builder code).
  except tfds.core.DatasetNotFoundError:
    return None
  config = dict(
    name="tfds",
    tfds_name=name,
    data_dir=data_dir,
    test_split=test_split,
    train_split=train_split,
    caption_key="",
  )
  return build_tfds(ml_collections.ConfigDict({**config, **fields}))


def _labelled(data: ImageTextData, names, description: str) -> ImageTextData:
  """A TFDS classification set (its `label` feature) with the curated class names."""
  found = len(data.class_names.get("label", ()))
  if found != len(names):
    raise ConfigError(f"{description}: TFDS label has {found} classes, expected {len(names)}")
  return ImageTextData(
    description=description,
    train=data.train,
    test=data.test,
    class_names={"label": tuple(names)},
  )


class _Relabelled:
  """ImageNet-1k labels as a subset's (ImageNet-A/R: 200 classes, numbered in ImageNet order)."""

  def __init__(self, source, mapping: dict, description: str):
    self.source, self.mapping, self.description = source, mapping, description

  def __len__(self):
    return len(self.source)

  def __getitem__(self, i):
    example = dict(self.source[i])
    label = int(example["label"])
    if label not in self.mapping:
      raise ConfigError(
        f"{self.description}: example {i} has ImageNet class {label} "
        f"({imagenet_wnids()[label]}), which is not one of its {len(self.mapping)} classes"
      )
    example["label"] = self.mapping[label]
    return example


def _synset_rows(root: str, index: dict) -> list:
  """Images of <root>/<folder>/* with label index[folder]; folders not in `index` are an error."""
  rows = []
  for folder in sorted(storage.listdir(root)):
    if not storage.isdir(storage.join(root, folder)):
      continue
    if folder not in index:
      raise ConfigError(
        f"{root}/{folder} is not a class folder of this dataset (expected one of its WordNet ids, "
        "like n01440764, or for ImageNet-V2 a class index 0-999)"
      )
    rows += [
      {"key": f"{folder}/{name}", "image": storage.join(root, folder, name), "label": index[folder]}
      for name in sorted(storage.listdir(storage.join(root, folder)))
      if name.rsplit(".", 1)[-1].lower() in ("jpeg", "jpg", "png")
    ]
  return rows


def _imagenet_like(config, tfds_name, tfds_split, folders, index, how, subset=(), **tfds_fields):
  """An ImageNet-labelled set: TFDS `tfds_name`, else synset folders (folder name -> label by
  `index`). subset: the WordNet ids of a subset's classes (ImageNet-A/R), which zero-shot then
  chooses among, labelled 0..len-1 in ImageNet order."""
  data_dir = _data_dir(config, tfds_name)
  data = _tfds(tfds_name, data_dir, tfds_split, **tfds_fields)
  names = benchmark_names.IMAGENET_CLASSNAMES
  keep = [i for i, w in enumerate(imagenet_wnids()) if w in set(subset)]
  if data is not None:
    data = _labelled(data, names, f"TFDS {tfds_name} ({tfds_split}) in {data_dir}")
    if not subset:
      return data
    relabel = lambda split: _Relabelled(split, {old: k for k, old in enumerate(keep)}, tfds_name)
    return ImageTextData(
      description=f"{data.description}, its {len(keep)} classes",
      train=relabel(data.train),
      test=relabel(data.test),
      class_names={"label": tuple(names[i] for i in keep)},
    )
  if subset:
    index = {w: k for k, w in enumerate(imagenet_wnids()[i] for i in keep)}
    names = tuple(names[i] for i in keep)
  for test_folder, train_folder in folders:
    root = storage.join(data_dir, test_folder)
    if storage.isdir(root):
      test = _synset_rows(root, index)
      train_root = storage.join(data_dir, train_folder) if train_folder else ""
      train = _synset_rows(train_root, index) if train_root and storage.isdir(train_root) else []
      return ImageTextData(
        description=f"{root} ({len(test)} images"
        + (f"; {len(train)} train images in {train_root})" if train else ")"),
        train=FolderSource(train),
        test=FolderSource(test),
        class_names={"label": names},
      )
  searched = [f"{data_dir}/{tfds_name} (TFDS)"] + [f"{data_dir}/{f}" for f, _ in folders]
  raise _missing(config.name, data_dir, searched, how)


def _data_dir(config, name: str) -> str:
  data_dir = config.get("data_dir", "")
  if not data_dir:
    raise ConfigError(
      f"data.name={name} reads a standard dataset from a local or gs:// folder: set data.data_dir "
      "(`python -m vlm_jax.evaluate ... --data_dir DIR`)"
    )
  return storage.resolve(data_dir)


@DATASETS.register("imagenet")
def build_imagenet(config) -> ImageTextData:
  """ImageNet-1k validation (50,000 images), labelled 0-999 in WordNet-id order, CLIP's class names."""
  wnids = imagenet_wnids()
  return _imagenet_like(
    config,
    "imagenet2012",
    "validation",
    [("imagenet/val", "imagenet/train")],
    {w: i for i, w in enumerate(wnids)},
    "Put the validation images in synset folders (ILSVRC2012_img_val.tar from image-net.org, sorted "
    "with ILSVRC's valprep.sh) at imagenet/val/, or prepare TFDS imagenet2012 there "
    "(tfds build imagenet2012 --manual_dir ... --data_dir DIR).",
  )


# TFDS's config name -> the release's folder name.
V2_VARIANTS = {
  "matched-frequency": "matched-frequency",
  "threshold-0.7": "threshold0.7",
  "topimages": "top-images",
}


@DATASETS.register("imagenet_v2")
def build_imagenet_v2(config) -> ImageTextData:
  """ImageNet-V2 (10,000 images; data.variant matched-frequency by default), ImageNet-1k's labels."""
  variant = config.get("variant", "matched-frequency")
  if variant not in V2_VARIANTS:
    raise ConfigError(f"imagenet_v2 variant {variant!r}: use one of {', '.join(V2_VARIANTS)}")
  folder = f"imagenetv2-{V2_VARIANTS[variant]}-format-val"
  return _imagenet_like(
    config,
    f"imagenet_v2/{variant}",
    "test",
    [(folder, "")],
    {str(i): i for i in range(1000)},
    f"Unpack {folder}.tar.gz (https://github.com/modestyachts/ImageNetV2) into the data dir, or "
    "prepare TFDS imagenet_v2 there (tfds build imagenet_v2 --data_dir DIR).",
    train_split="test",
  )


@DATASETS.register("imagenet_sketch")
def build_imagenet_sketch(config) -> ImageTextData:
  """ImageNet-Sketch (50,889 images), ImageNet-1k's labels."""
  wnids = imagenet_wnids()
  return _imagenet_like(
    config,
    "imagenet_sketch",
    "test",
    [("imagenet-sketch/sketch", "")],
    {w: i for i, w in enumerate(wnids)},
    "Unpack ImageNet-Sketch (https://github.com/HaohanWang/ImageNet-Sketch) so that its synset "
    "folders are in imagenet-sketch/sketch/, or prepare TFDS imagenet_sketch in the data dir.",
    train_split="test",
  )


@DATASETS.register("imagenet_a")
def build_imagenet_a(config) -> ImageTextData:
  """ImageNet-A (7,500 natural adversarial images), zero-shot among its 200 ImageNet classes."""
  return _imagenet_like(
    config,
    "imagenet_a",
    "test",
    [("imagenet-a", "")],
    None,
    "Unpack imagenet-a.tar (https://github.com/hendrycks/natural-adv-examples) into the data dir, "
    "or prepare TFDS imagenet_a there.",
    subset=benchmark_names.IMAGENET_A_WNIDS,
    train_split="test",
  )


@DATASETS.register("imagenet_r")
def build_imagenet_r(config) -> ImageTextData:
  """ImageNet-R (30,000 renditions), zero-shot among its 200 ImageNet classes."""
  return _imagenet_like(
    config,
    "imagenet_r",
    "test",
    [("imagenet-r", "")],
    None,
    "Unpack imagenet-r.tar (https://github.com/hendrycks/imagenet-r) into the data dir, or "
    "prepare TFDS imagenet_r there.",
    subset=benchmark_names.IMAGENET_R_WNIDS,
    train_split="test",
  )


def _cifar(config, name, folder, test_file, train_files, label_field, names, tarball):
  data_dir = _data_dir(config, name)
  data = _tfds(name, data_dir, "test")
  if data is not None:
    return _labelled(data, names, f"TFDS {name} in {data_dir}")
  root = storage.join(data_dir, folder)
  if not storage.exists(storage.join(root, test_file)):
    raise _missing(
      name,
      data_dir,
      [f"{data_dir}/{name} (TFDS)", f"{root}/{test_file}"],
      f"Unpack {tarball} from "
      "https://www.cs.toronto.edu/~kriz/cifar.html into the data dir, or prepare TFDS "
      f"{name} there (tfds build {name} --data_dir DIR).",
    )

  def load(files):
    images, labels = [], []
    for file in files:
      batch = pickle.loads(storage.read_bytes(storage.join(root, file)), encoding="bytes")
      images.append(
        np.asarray(batch[b"data"], np.uint8).reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
      )
      labels.append(np.asarray(batch[label_field.encode()], np.int64))
    return _Arrays(np.concatenate(images), np.concatenate(labels))

  present = [f for f in train_files if storage.exists(storage.join(root, f))]
  return ImageTextData(
    description=f"{name} python pickles in {root}",
    train=load(present) if present else _Arrays(np.zeros((0, 32, 32, 3), np.uint8), []),
    test=load([test_file]),
    class_names={"label": names},
  )


CIFAR10_TAR, CIFAR100_TAR = "cifar-10-python.tar.gz", "cifar-100-python.tar.gz"


@DATASETS.register("cifar10")
def build_cifar10(config) -> ImageTextData:
  files = [f"data_batch_{i}" for i in range(1, 6)]
  names = benchmark_names.CIFAR10_CLASSNAMES
  return _cifar(
    config, "cifar10", "cifar-10-batches-py", "test_batch", files, "labels", names, CIFAR10_TAR
  )


@DATASETS.register("cifar100")
def build_cifar100(config) -> ImageTextData:
  names = benchmark_names.CIFAR100_CLASSNAMES
  return _cifar(
    config, "cifar100", "cifar-100-python", "test", ["train"], "fine_labels", names, CIFAR100_TAR
  )


def _karpathy(config, name: str, candidates, image_folder, how: str) -> ImageTextData:
  """Karpathy's split file: {'images': [{'filepath'?, 'filename', 'split', 'sentences': [{'raw'}]}]}."""
  data_dir = _data_dir(config, name)
  split = config.get("split", "test")
  for json_path in [storage.join(data_dir, c) for c in candidates]:
    if storage.exists(json_path):
      break
  else:
    if name == "coco_karpathy":
      data = _tfds("coco_captions", data_dir, split, caption_key="captions/text")
      if data is not None:
        return data
    searched = [f"{data_dir}/{c}" for c in candidates]
    raise _missing(
      name, data_dir, searched + (["coco_captions (TFDS)"] * (name == "coco_karpathy")), how
    )
  root = (
    storage.join(json_path.rsplit("/", 1)[0], image_folder)
    if image_folder
    else json_path.rsplit("/", 1)[0]
  )
  rows = []
  for image in storage.read_json(json_path)["images"]:
    if image["split"] != split:
      continue
    path = storage.join(root, image.get("filepath", ""), image["filename"])
    captions = [s["raw"].strip() for s in image["sentences"]]
    rows.append(
      {"key": image["filename"], "image": path, "caption": captions[0], "captions": captions}
    )
  if not rows:
    raise ConfigError(f"{json_path} has no images in split {split!r}")
  return ImageTextData(
    description=f"{name} {split} split ({len(rows)} images) from {json_path}",
    train=FolderSource([]),
    test=FolderSource(rows),
    class_names={},
  )


@DATASETS.register("coco_karpathy")
def build_coco_karpathy(config) -> ImageTextData:
  """COCO with Karpathy's splits (test: 5,000 images, 5+ captions each)."""
  return _karpathy(
    config,
    "coco_karpathy",
    ["coco/dataset_coco.json", "dataset_coco.json"],
    "",
    "Put Karpathy's dataset_coco.json (caption_datasets.zip, "
    "https://cs.stanford.edu/people/karpathy/deepimagesent/) in coco/ beside the COCO 2014 image "
    "folders train2014/ and val2014/ (https://cocodataset.org), or prepare TFDS coco_captions.",
  )


@DATASETS.register("flickr30k_karpathy")
def build_flickr30k(config) -> ImageTextData:
  """Flickr30k with Karpathy's splits (test: 1,000 images, 5 captions each)."""
  return _karpathy(
    config,
    "flickr30k_karpathy",
    ["flickr30k/dataset_flickr30k.json", "dataset_flickr30k.json"],
    "flickr30k-images",
    "Put Karpathy's dataset_flickr30k.json (caption_datasets.zip, "
    "https://cs.stanford.edu/people/karpathy/deepimagesent/) in flickr30k/ and the Flickr30k "
    "images (https://shannon.cs.illinois.edu/DenotationGraph/) in flickr30k/flickr30k-images/.",
  )


VQA_QUESTIONS = "v2_OpenEnded_mscoco_val2014_questions.json"
VQA_ANNOTATIONS = "v2_mscoco_val2014_annotations.json"


@DATASETS.register("vqav2")
def build_vqav2(config) -> ImageTextData:
  """VQAv2 val (214k questions on 40k COCO val2014 images), grouped by image, each question with its
  10 human answers and its answer type (yes/no, number, other)."""
  data_dir = _data_dir(config, "vqav2")
  questions, annotations = (
    storage.join(data_dir, "vqav2", f) for f in (VQA_QUESTIONS, VQA_ANNOTATIONS)
  )
  image_dirs = [
    storage.join(data_dir, "coco", "val2014"),
    storage.join(data_dir, "vqav2", "val2014"),
  ]
  image_dir = next((d for d in image_dirs if storage.isdir(d)), None)
  if not (storage.exists(questions) and storage.exists(annotations) and image_dir):
    raise _missing(
      "vqav2",
      data_dir,
      [questions, annotations] + [f"{d}/" for d in image_dirs],
      "Put the val questions and annotations JSON (https://visualqa.org/download.html) in vqav2/ "
      "and the COCO val2014 images in coco/val2014/.",
    )
  answers = {a["question_id"]: a for a in storage.read_json(annotations)["annotations"]}
  by_image = collections.defaultdict(list)
  for q in storage.read_json(questions)["questions"]:
    by_image[q["image_id"]].append(q)
  rows = []
  for image_id in sorted(by_image):
    qs = sorted(by_image[image_id], key=lambda q: q["question_id"])
    rows.append(
      {
        "key": str(image_id),
        "image": storage.join(image_dir, f"COCO_val2014_{image_id:012d}.jpg"),
        "caption": None,
        "questions": [q["question"] for q in qs],
        "answers": [[a["answer"] for a in answers[q["question_id"]]["answers"]] for q in qs],
        "question_types": [answers[q["question_id"]]["answer_type"] for q in qs],
      }
    )
  return ImageTextData(
    description=f"VQAv2 val ({sum(len(r['questions']) for r in rows)} questions on {len(rows)} "
    f"images) from {data_dir}",
    train=FolderSource([]),
    test=FolderSource(rows),
    class_names={},
    question_types=("yes/no", "number", "other"),
  )
