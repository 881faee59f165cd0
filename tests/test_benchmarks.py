"""The standard benchmark suite: readers of the datasets' original layouts and of TFDS (mocked), the
papers' retrieval counting, and a converted CLIP evaluated from the command line against an
independent computation (transformers' model, NumPy prompt ensembling and brute-force recall)."""

import csv
import io
import json
import os
import pickle
import subprocess
import sys
from unittest import mock

import ml_collections
import numpy as np
from PIL import Image
import pytest

import vlm_jax.builtins  # noqa: F401  (registers the datasets)
from vlm_jax.data import benchmark_names
from vlm_jax.data.benchmarks import imagenet_wnids
from vlm_jax.errors import ConfigError, MissingDataError
from vlm_jax.eval import harness
from vlm_jax.eval.retrieval import multi_recall_at_k
from vlm_jax.registry import DATASETS

CAPTIONS = ["a", "b", "c", "d", "e"]


def read(name: str, data_dir, **fields):
  return DATASETS.get(name)(
    ml_collections.ConfigDict(dict(name=name, data_dir=str(data_dir), **fields))
  )


def image(rng, size=(48, 40)) -> Image.Image:
  """A random non-square RGB image (width, height), so the centre crop matters."""
  return Image.fromarray(rng.integers(0, 256, size=(size[1], size[0], 3), dtype=np.uint8))


def write_imagenet(root, labels, rng, folder="imagenet/val"):
  """Images in ImageNet's synset folders: image i in the folder of class labels[i] (a WordNet id)."""
  paths = []
  for i, label in enumerate(labels):
    wnid = imagenet_wnids()[label]
    os.makedirs(os.path.join(root, folder, wnid), exist_ok=True)
    path = os.path.join(root, folder, wnid, f"ILSVRC2012_val_{i:08d}.JPEG")
    image(rng, (40 + 8 * (i % 3), 48)).save(path, format="JPEG")
    paths.append(path)
  return paths


def write_karpathy(root, rng, folder="coco", json_name="dataset_coco.json", images="val2014"):
  """Karpathy's split file: 6 test images x 5 captions, one train and one val image (left out)."""
  entries = []
  for i, split in enumerate(["test"] * 6 + ["train", "val"]):
    name = f"COCO_val2014_{i:012d}.jpg"
    os.makedirs(os.path.join(root, folder, images), exist_ok=True)
    image(rng).save(os.path.join(root, folder, images, name))
    sentences = [{"raw": f"{w} picture number {i} with words {w}{w} "} for w in CAPTIONS]
    entry = {"filename": name, "split": split, "sentences": sentences, "imgid": i}
    entries.append({**entry, "filepath": images} if folder == "coco" else entry)
  with open(os.path.join(root, folder, json_name), "w") as f:
    json.dump({"images": entries, "dataset": folder}, f)


def write_cifar10(root, rng, n=12):
  """CIFAR-10's python pickles (test_batch and data_batch_1): rows of 3072 channel-major bytes."""
  folder = os.path.join(root, "cifar-10-batches-py")
  os.makedirs(folder, exist_ok=True)
  pixels = rng.integers(0, 256, size=(2, n, 32, 32, 3), dtype=np.uint8)
  labels = rng.integers(0, 10, size=(2, n))
  for k, name in enumerate(["test_batch", "data_batch_1"]):
    batch = {b"data": pixels[k].transpose(0, 3, 1, 2).reshape(n, -1), b"labels": list(labels[k])}
    with open(os.path.join(folder, name), "wb") as f:
      pickle.dump(batch, f)
  return pixels[0], labels[0]


VQA_ANSWERS = [["yes"] * 7 + ["no"] * 3, ["2"] * 2 + ["two"] + ["3"] * 7, ["red"] * 10]


VQA_QUESTIONS = [
  (42, 420, "is it red?", "yes/no"),
  (42, 421, "how many?", "number"),
  (7, 70, "what colour is it?", "other"),
]


def write_vqav2(root, rng, answers=VQA_ANSWERS):
  """VQAv2's questions and annotations JSON: 3 questions on 2 COCO val2014 images (written if absent)."""
  os.makedirs(os.path.join(root, "vqav2"), exist_ok=True)
  os.makedirs(os.path.join(root, "coco", "val2014"), exist_ok=True)
  for image_id in (42, 7):
    path = os.path.join(root, "coco", "val2014", f"COCO_val2014_{image_id:012d}.jpg")
    if not os.path.exists(path):
      image(rng).save(path)
  questions = [{"image_id": i, "question_id": q, "question": t} for i, q, t, _ in VQA_QUESTIONS]
  annotations = [
    {"image_id": i, "question_id": q, "answer_type": a, "answers": [{"answer": x} for x in given]}
    for (i, q, _, a), given in zip(VQA_QUESTIONS, answers)
  ]
  for name, key, value in (
    ("v2_OpenEnded_mscoco_val2014_questions.json", "questions", questions),
    ("v2_mscoco_val2014_annotations.json", "annotations", annotations),
  ):
    with open(os.path.join(root, "vqav2", name), "w") as f:
      json.dump({key: value}, f)


def brute_force_recall(scores, text_image, k):
  """Recall@K by sorting each query's candidates (the papers' definition, written out)."""
  i2t = []
  for i in range(scores.shape[0]):
    top = np.argsort(-scores[i])[:k]
    i2t.append(any(text_image[j] == i for j in top))
  t2i = [i in np.argsort(-scores[:, j])[:k] for j, i in enumerate(text_image)]
  return np.mean(i2t), np.mean(t2i)


def test_multi_caption_recall_counts_an_image_as_hit_when_any_caption_is_in_the_top_k():
  rng = np.random.default_rng(0)
  text_image = np.repeat(np.arange(7), 5)
  for _ in range(5):
    scores = rng.normal(size=(7, 35))
    recalls = multi_recall_at_k(scores, text_image, (1, 2, 5, 10))
    for k in (1, 2, 5, 10):
      assert (recalls["i2t"][k], recalls["t2i"][k]) == brute_force_recall(scores, text_image, k)
  # By hand: image 0's best caption ranks 3rd, so it is a hit at 3 but not at 2.
  scores = np.array([[0.1, 0.9, 0.8, 0.3], [0.0, 0.95, 0.85, 0.4]])
  recalls = multi_recall_at_k(scores, np.array([0, 1, 1, 0]), (1, 2, 3))
  assert recalls["i2t"] == {1: 0.5, 2: 0.5, 3: 1.0}
  # Text 3 ranks its image (0) 2nd; the others rank theirs 1st.
  assert recalls["t2i"] == {1: 0.75, 2: 1.0, 3: 1.0}


def test_original_layouts_are_read_with_the_curated_labels(tmp_path):
  rng = np.random.default_rng(0)
  labels = [0, 1, 1, 999, 500]
  write_imagenet(tmp_path, labels, rng)
  data = read("imagenet", tmp_path)
  assert [data.test[i]["label"] for i in range(len(data.test))] == sorted(labels)
  names = data.class_names["label"]
  assert len(names) == 1000 and names[0] == "tench" and names[999] == "toilet paper"
  assert imagenet_wnids()[0] == "n01440764"  # tench, ILSVRC's first synset
  assert Image.open(io.BytesIO(data.test[0]["image"])).size == (40, 48)
  # ImageNet-V2's release names its folders by class index.
  write_imagenet(tmp_path, [3], rng, folder="imagenetv2-matched-frequency-format-val")
  os.rename(
    tmp_path / "imagenetv2-matched-frequency-format-val" / imagenet_wnids()[3],
    tmp_path / "imagenetv2-matched-frequency-format-val" / "3",
  )
  assert read("imagenet_v2", tmp_path).test[0]["label"] == 3

  # ImageNet-R: its 200 classes only, numbered in ImageNet order; another class's folder is an error.
  r_wnids = sorted(benchmark_names.IMAGENET_R_WNIDS)
  ids = [imagenet_wnids().index(w) for w in (r_wnids[0], r_wnids[5])]
  write_imagenet(tmp_path, ids, rng, folder="imagenet-r")
  imagenet_r = read("imagenet_r", tmp_path)
  assert [imagenet_r.test[i]["label"] for i in range(2)] == [0, 5]
  names = benchmark_names.IMAGENET_CLASSNAMES
  assert imagenet_r.class_names["label"][5] == names[imagenet_wnids().index(r_wnids[5])]
  assert len(imagenet_r.class_names["label"]) == 200
  write_imagenet(tmp_path, [0], rng, folder="imagenet-r")  # tench: not an ImageNet-R class
  with pytest.raises(ConfigError, match="n01440764 is not a class folder of this dataset"):
    read("imagenet_r", tmp_path)

  pixels, cifar_labels = write_cifar10(tmp_path, rng)
  cifar = read("cifar10", tmp_path)
  assert len(cifar.test) == len(cifar.train) == 12
  np.testing.assert_array_equal(cifar.test[3]["image"], pixels[3])  # channel-major rows -> HWC
  assert cifar.test[3]["label"] == cifar_labels[3]
  assert cifar.class_names["label"] == tuple(benchmark_names.CIFAR10_CLASSNAMES)

  write_karpathy(tmp_path, rng)
  coco = read("coco_karpathy", tmp_path)
  assert len(coco.test) == 6 and len(coco.test[0]["captions"]) == 5
  assert coco.test[2]["captions"][1] == "b picture number 2 with words bb"
  write_karpathy(tmp_path, rng, "flickr30k", "dataset_flickr30k.json", "flickr30k-images")
  assert len(read("flickr30k_karpathy", tmp_path).test) == 6

  write_vqav2(tmp_path, rng)
  vqa = read("vqav2", tmp_path)
  assert [vqa.test[i]["key"] for i in range(2)] == ["7", "42"]
  assert vqa.test[1]["questions"] == ["is it red?", "how many?"]
  assert (
    vqa.test[1]["answers"][1] == VQA_ANSWERS[1] and vqa.test[1]["question_types"][1] == "number"
  )


def test_missing_data_names_the_paths_searched_and_how_to_get_it(tmp_path, capsys):
  for name, expected in (
    ("imagenet", ["imagenet/val", "imagenet2012 (TFDS)", "valprep.sh"]),
    ("coco_karpathy", ["coco/dataset_coco.json", "coco_captions (TFDS)", "train2014/"]),
    ("cifar100", ["cifar-100-python/test", "cifar-100-python.tar.gz", "tfds build cifar100"]),
    ("flickr30k_karpathy", ["flickr30k/dataset_flickr30k.json", "caption_datasets.zip"]),
    ("vqav2", ["v2_mscoco_val2014_annotations.json", "coco/val2014/", "visualqa.org"]),
  ):
    with pytest.raises(MissingDataError) as error:
      read(name, tmp_path)
    for text in expected + [str(tmp_path)]:
      assert text in str(error.value), (name, text, str(error.value))
  # Probing TFDS coco_captions imports its builder code, which asks for TensorFlow: not what is missing.
  assert "TensorFlow" not in capsys.readouterr().out
  (tmp_path / "imagenet" / "val" / "not_a_synset").mkdir(parents=True)
  with pytest.raises(ConfigError, match="not_a_synset is not a class folder of this dataset"):
    read("imagenet", tmp_path)
  with pytest.raises(ConfigError, match="set data.data_dir"):
    read("cifar10", "")


def test_tfds_datasets_through_the_data_source_api_with_mocked_data(tmp_path):
  tfds = pytest.importorskip("tensorflow_datasets")
  # mock_data fakes what a prepared dataset reads; the reader asks first whether it is prepared.
  prepared = mock.patch.object(tfds.core.DatasetBuilder, "is_prepared", lambda self: True)
  for name, tfds_name, classes in (
    ("imagenet", "imagenet2012", 1000),
    ("imagenet_v2", "imagenet_v2", 1000),
    ("cifar10", "cifar10", 10),
    ("cifar100", "cifar100", 100),
  ):
    with tfds.testing.mock_data(num_examples=4), prepared:
      data = read(name, tmp_path)
      assert tfds_name in data.description and len(data.test) == 4
      example = data.test[1]
      assert example["image"].ndim == 3 and 0 <= example["label"] < classes
      assert len(data.class_names["label"]) == classes
      if name == "cifar100":  # the fine label is `label`; the curated names are the fine classes'
        assert data.class_names["label"][0] == "apple" and "coarse_label" in example


def write_tfds_coco_captions(data_dir, karpathy_root):
  """TFDS's coco_captions/2014 (Karpathy's splits) prepared from a Karpathy folder: its features, its
  file names and the same JPEG bytes. Built by a builder of the test's own: TFDS's imports TensorFlow."""
  import tensorflow_datasets as tfds  # pylint: disable=import-outside-toplevel

  with open(os.path.join(karpathy_root, "coco", "dataset_coco.json")) as f:
    images = json.load(f)["images"]

  class CocoCaptions(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    VERSION = tfds.core.Version("1.1.0")
    BUILDER_CONFIGS = [tfds.core.BuilderConfig(name="2014")]

    def _info(self):
      features = {
        "image": tfds.features.Image(encoding_format="jpeg"),
        "image/filename": tfds.features.Text(),
        "image/id": np.int64,
        "captions": tfds.features.Sequence({"text": tfds.features.Text(), "id": np.int64}),
      }
      return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict(features))

    def _split_generators(self, dl_manager):
      return {split: self._generate_examples(split) for split in ("train", "val", "test")}

    def _generate_examples(self, split):
      for image in images:
        if image["split"] == split:
          path = os.path.join(karpathy_root, "coco", image["filepath"], image["filename"])
          with open(path, "rb") as f:
            data = f.read()
          texts = [s["raw"] for s in image["sentences"]]
          yield (
            image["imgid"],
            {
              "image": data,
              "image/filename": image["filename"],
              "image/id": image["imgid"],
              "captions": {"text": texts, "id": list(range(len(texts)))},
            },
          )

  builder = CocoCaptions(data_dir=str(data_dir), file_format="array_record")
  builder.download_and_prepare()


def test_tfds_coco_captions_reads_as_the_karpathy_json_does(tmp_path):
  pytest.importorskip("tensorflow_datasets")
  write_karpathy(tmp_path / "json", np.random.default_rng(0))
  write_tfds_coco_captions(tmp_path / "tfds", tmp_path / "json")
  from_json, from_tfds = (
    read("coco_karpathy", tmp_path / "json"),
    read("coco_karpathy", tmp_path / "tfds"),
  )
  assert (
    "coco_captions" in from_tfds.description and len(from_tfds.test) == len(from_json.test) == 6
  )
  by_key = {from_json.test[i]["key"]: from_json.test[i] for i in range(6)}
  for i in range(6):
    ours = from_tfds.test[i]
    theirs = by_key[ours["key"]]  # keyed by the same file names
    assert ours["captions"] == theirs["captions"] and ours["caption"] == theirs["caption"]
    np.testing.assert_array_equal(
      ours["image"], np.asarray(Image.open(io.BytesIO(theirs["image"])))
    )


# OpenAI CLIP's image normalisation, which the converted model's preprocessing must apply.
CLIP_MEAN = np.array([0.48145466, 0.4578275, 0.40821073])
CLIP_STD = np.array([0.26862954, 0.26130258, 0.27577711])


def reference_pixels(data: bytes, size=32) -> np.ndarray:
  """CLIP's evaluation transform written out: shorter side to `size` (bicubic), centre crop, scale."""
  img = Image.open(io.BytesIO(data)).convert("RGB")
  w, h = img.size
  scale = size / min(w, h)
  img = img.resize((max(size, int(w * scale)), max(size, int(h * scale))), Image.Resampling.BICUBIC)
  left, top = round((img.size[0] - size) / 2), round((img.size[1] - size) / 2)
  img = img.crop((left, top, left + size, top + size))
  return ((np.asarray(img, np.float32) / 255 - CLIP_MEAN) / CLIP_STD).astype(np.float32)


class Reference:
  """Embeddings from transformers' CLIPModel (the model the workdir was converted from)."""

  def __init__(self, model, tokenize):
    self.model, self.tokenize = model, tokenize

  def images(self, pixels):
    import torch

    with torch.no_grad():
      x = torch.from_numpy(np.stack(pixels).transpose(0, 3, 1, 2).copy())
      out = self.model.get_image_features(pixel_values=x)
    out = getattr(out, "pooler_output", out).numpy()
    return out / np.linalg.norm(out, axis=1, keepdims=True)

  def texts(self, texts):
    import torch

    outs = []
    for i in range(0, len(texts), 1000):
      with torch.no_grad():
        ids = torch.from_numpy(self.tokenize(texts[i : i + 1000]).astype(np.int64))
        out = self.model.get_text_features(input_ids=ids)
      outs.append(getattr(out, "pooler_output", out).numpy())
    out = np.concatenate(outs)
    return out / np.linalg.norm(out, axis=1, keepdims=True)

  def zero_shot_scores(self, image_emb, names, templates):
    """Prompt ensembling as CLIP does it: each class the normalised mean of its normalised prompts."""
    text = self.texts([t.format(n) for n in names for t in templates])
    classes = text.reshape(len(names), len(templates), -1).mean(axis=1)
    return image_emb @ (classes / np.linalg.norm(classes, axis=1, keepdims=True)).T


def accuracies(scores, labels):
  order = np.argsort(-scores, axis=1)
  top1 = order[:, 0] == labels
  return {
    "acc1": np.mean(top1),
    "acc5": np.mean([label in row[:5] for row, label in zip(order, labels)]),
    "mean_per_class_recall": np.mean([top1[labels == c].mean() for c in np.unique(labels)]),
  }


@pytest.mark.ci
def test_suite_on_a_converted_clip_from_the_command_line_equals_an_independent_computation(
  tmp_path, gcs
):
  """`convert`, `eval --suite standard` and `tables --suite standard` as a user types them (relative
  paths, dashed flags) on a data dir of small files in the original layouts; every number equals the
  same metric computed from transformers' model with NumPy."""
  from tests import helpers
  from tests.hf_models import make_hf_clip
  import vlm_jax

  run = lambda *args: subprocess.run(
    [sys.executable, "-m", *args],
    env=helpers.subprocess_env(1),
    capture_output=True,
    text=True,
    timeout=600,
    cwd=tmp_path,
  )
  hf = make_hf_clip(str(tmp_path / "hf_clip"))
  result = run("vlm_jax.convert", "--from", "hf_clip", "--input", "hf_clip", "--output", "clip")
  assert result.returncode == 0, result.stderr[-3000:]
  ref = Reference(hf, vlm_jax.load(str(tmp_path / "clip")).tokenize)
  rng = np.random.default_rng(0)
  templates = benchmark_names.TEMPLATES["openai_imagenet_7"]

  # ImageNet: 12 JPEGs, labelled (from the reference's ranking of all 1000 classes) so that 4 are
  # top-1 hits, 4 more top-5 hits and 4 misses; the command must find exactly these.
  jpegs = []
  for i in range(12):
    buffer = io.BytesIO()
    image(rng, (40 + 8 * (i % 3), 48)).save(buffer, format="JPEG")
    jpegs.append(buffer.getvalue())
  image_emb = ref.images([reference_pixels(b) for b in jpegs])
  names = benchmark_names.IMAGENET_CLASSNAMES
  ranking = np.argsort(-ref.zero_shot_scores(image_emb, names, templates), axis=1)
  labels = np.array([ranking[i, (0, 2, 600)[i % 3]] for i in range(12)])
  for i, (label, data) in enumerate(zip(labels, jpegs)):
    folder = tmp_path / "data" / "imagenet" / "val" / imagenet_wnids()[label]
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"ILSVRC2012_val_{i:08d}.JPEG").write_bytes(data)
  imagenet = accuracies(ref.zero_shot_scores(image_emb, names, templates), labels)
  assert (imagenet["acc1"], imagenet["acc5"]) == (4 / 12, 8 / 12)
  expected = {("imagenet", "zero_shot_openai_imagenet_7"): imagenet}

  # COCO and Flickr30k (Karpathy test: 6 images x 5 captions), brute-force recall.
  write_karpathy(tmp_path / "data", rng)
  write_karpathy(tmp_path / "data", rng, "flickr30k", "dataset_flickr30k.json", "flickr30k-images")
  for dataset, folder, images in (
    ("coco_karpathy", "coco", "val2014"),
    ("flickr30k_karpathy", "flickr30k", "flickr30k-images"),
  ):
    entries = json.load(open(next((tmp_path / "data" / folder).glob("dataset_*.json"))))["images"]
    test = [e for e in entries if e["split"] == "test"]
    pixels = [
      reference_pixels((tmp_path / "data" / folder / images / e["filename"]).read_bytes())
      for e in test
    ]
    captions = [s["raw"].strip() for e in test for s in e["sentences"]]
    scores = ref.images(pixels) @ ref.texts(captions).T
    owner = np.repeat(np.arange(len(test)), 5)
    expected[(dataset, "retrieval")] = {
      f"{d}_r{k}": brute_force_recall(scores, owner, k)[j]
      for j, d in enumerate(("i2t", "t2i"))
      for k in (1, 5, 10)
    }

  # CIFAR-10 (python pickles) with CLIP's 18 CIFAR templates.
  cifar_pixels, cifar_labels = write_cifar10(tmp_path / "data", rng)
  cifar_emb = ref.images(
    [(p / 255 - CLIP_MEAN) / CLIP_STD for p in cifar_pixels.astype(np.float32)]
  )
  expected[("cifar10", "zero_shot")] = accuracies(
    ref.zero_shot_scores(
      cifar_emb, benchmark_names.CIFAR10_CLASSNAMES, benchmark_names.TEMPLATES["cifar"]
    ),
    cifar_labels,
  )
  write_vqav2(tmp_path / "data", rng)  # there, but CLIP does not answer questions: left out

  # A look at the first 5 images first: its own record, which the full evaluation below does not take
  # for the full one.
  result = run(
    "vlm_jax.evaluate",
    *("--workdir", "clip", "--tasks", "imagenet_zeroshot", "--data-dir", "data"),
    *("--templates", "openai_imagenet_7", "--limit", "5"),
  )
  assert result.returncode == 0, result.stderr[-3000:]
  limited = ("imagenet", "zero_shot_openai_imagenet_7_first5")
  record = json.load(open(harness.record_path(str(tmp_path / "clip"), 0, *limited)))
  assert (record["num_examples"], record["limit"]) == (5, 5)

  result = run(
    "vlm_jax.evaluate",
    "--workdir",
    "clip",
    "--suite",
    "standard",
    "--data-dir",
    "data",
    "--templates",
    "openai_imagenet_7",
  )
  assert result.returncode == 0, result.stderr[-3000:]
  log = result.stdout + result.stderr
  assert "left out (they do not fit model 'clip'): coco_captioning, vqav2" in log, log[-3000:]
  assert "skipped imagenet_sketch_zeroshot: imagenet_sketch is not in" in log, log[-3000:]

  result = run("vlm_jax.tables", "clip", "--suite", "standard", "--format", "csv")
  assert result.returncode == 0, result.stderr[-3000:]
  rows = {(r["dataset"], r["task"]): r for r in csv.DictReader(io.StringIO(result.stdout))}
  # --templates sets ImageNet's templates (its records are named for them); CIFAR keeps its own.
  assert set(expected) | {("cifar10", "linear_probe"), limited} == set(rows), rows.keys()
  assert (
    rows[limited]["examples"],
    rows[("imagenet", "zero_shot_openai_imagenet_7")]["examples"],
  ) == (
    "5",
    "12",
  )
  for key, metrics in expected.items():
    for name, value in metrics.items():
      assert float(rows[key][name]) == pytest.approx(value, abs=1e-4), (key, name)
    record = json.load(open(harness.record_path(str(tmp_path / "clip"), 0, *key)))
    assert record["num_examples"] == (12 if key[0] in ("imagenet", "cifar10") else 6)
  record = json.load(
    open(harness.record_path(str(tmp_path / "clip"), 0, "imagenet", "zero_shot_openai_imagenet_7"))
  )
  assert record["metrics"]["zero_shot/label_top5"] == 8 / 12

  # The same data in a bucket (the GCS emulator): the same records.
  from tests.gcs import BUCKET, fs

  keys = (("imagenet", "zero_shot_openai_imagenet_7"), ("coco_karpathy", "retrieval"))
  path = lambda key: harness.record_path(str(tmp_path / "clip"), 0, *key)
  local = {key: json.load(open(path(key))) for key in keys}
  fs().put(str(tmp_path / "data"), f"{BUCKET}/data", recursive=True)
  result = run(
    "vlm_jax.evaluate",
    "--workdir",
    "clip",
    "--tasks",
    "imagenet_zeroshot,coco_retrieval",
    "--templates",
    "openai_imagenet_7",
    "--data-dir",
    f"gs://{BUCKET}/data",
    "--force",
  )
  assert result.returncode == 0, result.stderr[-3000:]
  for key in keys:
    bucket = json.load(open(path(key)))
    assert bucket["created"] != local[key]["created"], key  # rewritten
    assert bucket["metrics"] == pytest.approx(local[key]["metrics"], abs=1e-6), key
    assert bucket["task_config"]["data"]["data_dir"] == f"gs://{BUCKET}/data"


@pytest.mark.ci
def test_captioning_and_vqav2_score_a_decoding_runs_own_captions_and_answers(tmp_path):
  """COCO Karpathy-test captioning and VQAv2 on a (2-step) prefix-LM run: the records equal the caption
  metrics of the captions `vlm_jax.load(run).caption` writes, and the VQA accuracy of its answers against
  human answers chosen so that the accuracy is known (10, 2 and 0 of 10 humans gave its answer)."""
  from tests import helpers
  import vlm_jax
  from vlm_jax.eval import text_metrics
  from vlm_jax.train import trainer

  overrides = {"train.duration": "2 steps", "train.checkpoint_every": "2 steps"}
  config = helpers.micro_config(helpers.PREFIXLM_TINY, **overrides)
  with config.unlocked():
    config.evals = {}
  trainer.train(config, str(tmp_path / "run"), log=lambda *a: None)
  m = vlm_jax.load(str(tmp_path / "run"))
  rng = np.random.default_rng(1)
  write_karpathy(tmp_path / "data", rng)
  write_vqav2(tmp_path / "data", rng)  # the images; the answers are rewritten below
  coco = read("coco_karpathy", tmp_path / "data")
  pixels = m.preprocess([Image.open(io.BytesIO(coco.test[i]["image"])) for i in range(6)])
  references = [coco.test[i]["captions"] for i in range(6)]
  captions = m.caption(pixels)
  expected = text_metrics.caption_scores(captions, references, per_image=True)

  folder = tmp_path / "data" / "coco" / "val2014"
  images = {i: Image.open(folder / f"COCO_val2014_{i:012d}.jpg") for i in (42, 7)}
  questions = [q for _, _, q, _ in VQA_QUESTIONS]
  said = m.answer(m.preprocess([images[i] for i, *_ in VQA_QUESTIONS]), questions)
  write_vqav2(
    tmp_path / "data",
    rng,
    [[a] * 10 for a in said[:1]] + [[said[1]] * 2 + ["not this"] * 8, ["not this either"] * 10],
  )
  # Leave-one-out over 10 humans of min(#matching / 3, 1): 1; (2 x 1/3 + 8 x 2/3) / 10 = 0.6; 0.
  vqa_accuracy = (1 + 0.6 + 0) / 3

  harness.evaluate(
    str(tmp_path / "run"),
    tasks=["coco_captioning", "vqav2"],
    data_dir=str(tmp_path / "data"),
    log=lambda *a: None,
  )
  record = lambda dataset, task: json.load(
    open(harness.record_path(str(tmp_path / "run"), 2, dataset, task))
  )["metrics"]
  captioning = json.load(
    open(harness.record_path(str(tmp_path / "run"), 2, "coco_karpathy", "captioning"))
  )
  for name in ("bleu4", "cider", "rouge_l"):
    assert captioning["metrics"][f"captioning/{name}"] == pytest.approx(expected[name]), name
    assert captioning["per_image"][name] == pytest.approx(expected["per_image"][name]), name
  assert captioning["per_image"]["caption"] == captions
  assert captioning["per_image"]["key"] == [coco.test[i]["key"] for i in range(6)]
  vqa = record("vqav2", "vqa")
  assert vqa["vqa/accuracy"] == pytest.approx(vqa_accuracy) and vqa["vqa/questions"] == 3
