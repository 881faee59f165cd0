"""Real data: brace patterns, tables / folders / tar shards through prepare, bad samples skipped and
counted, and a tiny CLIP trained from tar shards of real images that ship with matplotlib."""

import glob
import io
import json
import os
import tarfile

import matplotlib
import numpy as np
from PIL import Image
import pytest

from tests import helpers
from vlm_jax.data import pipeline, sources
from vlm_jax.errors import ConfigError
from vlm_jax.tools import prepare
from vlm_jax.train import trainer

MPL = os.path.join(os.path.dirname(matplotlib.__file__), "mpl-data")
REAL_IMAGES = sorted(
  glob.glob(os.path.join(MPL, "images", "*.png"))
  + [os.path.join(MPL, "sample_data", n) for n in ("grace_hopper.jpg", "logo2.png")]
)


def png(color, size=(24, 20)):
  buffer = io.BytesIO()
  Image.new("RGB", size, color).save(buffer, format="PNG")
  return buffer.getvalue()


def write_tar(path, samples, truncate_at=None):
  """samples: [(key, {ext: bytes})]; truncate_at: cut the file to that many bytes."""
  with tarfile.open(path, "w") as tar:
    for key, members in samples:
      for ext, data in members.items():
        info = tarfile.TarInfo(f"{key}.{ext}")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
  if truncate_at:
    with open(path, "r+b") as f:
      f.truncate(truncate_at)


def real_image_samples(repeat: int = 4):
  """[(key, {ext: bytes, 'txt': caption})]: matplotlib's images, captioned by their file names."""
  samples = []
  for i, path in enumerate(REAL_IMAGES * repeat):
    name = os.path.basename(path).rsplit(".", 1)[0].replace("_", " ")
    samples.append(
      (
        f"{i:05d}",
        {path.rsplit(".", 1)[1]: open(path, "rb").read(), "txt": f"the {name} icon".encode()},
      )
    )
  return samples


def test_brace_patterns():
  assert sources.expand_braces("/d/{000..002}.tar") == ["/d/000.tar", "/d/001.tar", "/d/002.tar"]
  assert sources.expand_braces("s{8..10}-{a,b}") == [
    "s8-a",
    "s8-b",
    "s9-a",
    "s9-b",
    "s10-a",
    "s10-b",
  ]
  assert sources.expand_braces("gs://b/x.tar") == ["gs://b/x.tar"]
  assert sources.resolve(["a{1..2}", "b"]) == ["a1", "a2", "b"]


def test_tables_and_folders_round_trip_through_prepare(tmp_path):
  images = tmp_path / "images"
  images.mkdir()
  colors = {f"im{i}.png": (i * 20, 255 - i * 20, 7) for i in range(12)}
  for name, color in colors.items():
    (images / name).write_bytes(png(color))
  rows = [(f"images/{name}", f"a colour {i}") for i, name in enumerate(colors)]
  (tmp_path / "t.csv").write_text("filepath,title\n" + "".join(f"{p},{c}\n" for p, c in rows))
  (tmp_path / "t.tsv").write_text("filepath\ttitle\n" + "".join(f"{p}\t{c}\n" for p, c in rows))
  (tmp_path / "t.jsonl").write_text(
    "".join(json.dumps({"img": p, "txt": c}) + "\n" for p, c in rows)
  )
  for table, keys in (
    ("t.csv", {}),
    ("t.tsv", {}),
    ("t.jsonl", dict(image_key="img", caption_key="txt")),
  ):
    out = tmp_path / f"prepared_{table}"
    info = prepare.prepare(
      "table", str(tmp_path / table), str(out), test_fraction=0.25, log=lambda *a: None, **keys
    )
    assert info["written"]["train"] + info["written"]["test"] == 12 and info["written"]["test"] > 0
    got = {}
    for split in ("train", "test"):
      for record in sources.PreparedSource(str(out / f"{split}.array_record")):
        got[record["caption"]] = record["image"]
    assert got == {c: (tmp_path / p).read_bytes() for p, c in rows}
  # An image folder: classes from folder names, or renamed by a file.
  for cls in ("cat", "dog"):
    os.makedirs(tmp_path / "folder" / cls)
    for i in range(3):
      (tmp_path / "folder" / cls / f"{i}.png").write_bytes(png((i, 0, 0)))
  (tmp_path / "names.txt").write_text("cat\ta cat\ndog\ta dog\n")
  info = prepare.prepare(
    "folder",
    str(tmp_path / "folder"),
    str(tmp_path / "pf"),
    classnames=str(tmp_path / "names.txt"),
    test_fraction=0.0,
    log=lambda *a: None,
  )
  assert info["class_names"] == ["a cat", "a dog"] and info["written"]["train"] == 6
  labels = sorted(
    r["label"] for r in sources.PreparedSource(str(tmp_path / "pf" / "train.array_record"))
  )
  assert labels == [0, 0, 0, 1, 1, 1]
  # Captionless data is for evaluation: training on it is a one-line error, not an endless skip.
  config = helpers.micro_config(
    **{
      "data.name": "prepared",
      "data.path": str(tmp_path / "pf"),
      "data.tokenizer": "bytes",
      "evals": {},
    }
  )
  with pytest.raises(ConfigError, match="has no captions"):
    trainer.train(config, str(tmp_path / "run"), log=lambda *a: None)


def test_bad_samples_of_every_kind_are_skipped_and_counted(tmp_path):
  good = {"png": png((1, 2, 3)), "txt": b"a good one"}
  write_tar(
    tmp_path / "a.tar",
    [
      ("k0", good),
      ("k1", {"png": b"not an image", "txt": b"x"}),
      ("k2", {"png": png((4, 5, 6)), "txt": b"   "}),
      ("k3", {"txt": b"no image"}),
      ("k4", {"png": png((7, 8, 9))}),
      ("k5", good),
    ],
  )
  noise = io.BytesIO()
  Image.fromarray(np.random.default_rng(0).integers(0, 255, (120, 120, 3), np.uint8)).save(
    noise, format="PNG"
  )
  big = [
    ("m0", good),
    ("m1", {"png": noise.getvalue(), "txt": b"cut"}),
  ]  # m1's image: ~40 KiB of noise
  write_tar(tmp_path / "b.tar", big)
  write_tar(tmp_path / "b.tar", big, truncate_at=os.path.getsize(tmp_path / "b.tar") // 2)
  info = prepare.prepare(
    "shards",
    str(tmp_path / "{a,b}.tar"),
    str(tmp_path / "out"),
    test_fraction=0.0,
    log=lambda *a: None,
  )
  assert info["written"]["train"] == 3  # k0, k5, m0
  assert info["skipped"] == {
    "undecodable_image": 1,
    "empty_caption": 1,
    "missing_image": 1,
    "missing_caption": 1,
    "truncated_tar": 1,
  }
  with pytest.raises(ConfigError, match="c.tar"):
    prepare.prepare(
      "shards", str(tmp_path / "{a,c}.tar"), str(tmp_path / "out2"), log=lambda *a: None
    )
  # The training pipeline drops samples that fail preprocessing and counts them; batches stay full.
  from vlm_jax.data import tokenizers, transforms

  data = [{"key": f"s{i}", "image": png((i, i, i)), "caption": f"sample {i}"} for i in range(20)]
  data[3] = {**data[3], "image": b"\x89PNG broken"}
  data[7] = {**data[7], "caption": ""}
  pre = transforms.Preprocess(8, tokenizers.ByteTokenizer(), 16)
  sources.SKIPS.reset()
  iterator = pipeline.train_iterator(data, pre, global_batch=6, seed=0, num_threads=1)
  batches = [next(iterator) for _ in range(5)]
  assert all(b["image"].shape == (6, 8, 8, 3) for b in batches)
  assert sources.SKIPS.snapshot() == {
    "undecodable_image": 2,
    "empty_caption": 2,
  }  # 30 rows: each bad one twice


def test_a_tiny_clip_trains_from_tar_shards_of_real_images(tmp_path):
  """Tar shards of the images matplotlib ships (captioned by their file names) -> prepare -> a micro CLIP."""
  assert len(REAL_IMAGES) >= 16, REAL_IMAGES
  samples = real_image_samples()
  for shard in range(2):
    write_tar(tmp_path / f"shard-{shard:03d}.tar", samples[shard::2])
  info = prepare.prepare(
    "shards",
    str(tmp_path / "shard-{000..001}.tar"),
    str(tmp_path / "prepared"),
    test_fraction=0.1,
    max_size=64,
    log=lambda *a: None,
  )
  assert info["written"]["train"] + info["written"]["test"] == len(samples) and not info["skipped"]
  config = helpers.micro_config(
    **{
      "data.name": "prepared",
      "data.path": str(tmp_path / "prepared"),
      "data.tokenizer": "bytes",
      "model.text.max_len": 32,
      "train.duration": "30 steps",
      "train.log_every": "5 steps",
      "train.checkpoint_every": "0 steps",
      "optim.lr": 3e-3,
      "optim.warmup": "5 steps",
      "evals": {},
    }
  )
  trainer.train(config, str(tmp_path / "run"), log=lambda *a: None)
  losses = helpers.losses(tmp_path / "run", "loss")
  assert losses[-1] < 0.75 * losses[0], (
    losses
  )  # from ln(batch) ~ 2.8 upwards: it learns to match them


def test_mixtures_draw_by_weight_deterministically():
  from vlm_jax.data import Mixture

  mix = Mixture([["a"] * 10, ["b"] * 30], [0.25, 0.75], seed=1)
  draws = [mix[i] for i in range(4000)]
  assert abs(draws.count("a") / 4000 - 0.25) < 0.03 and len(mix) == 40
  assert draws == [Mixture([["a"] * 10, ["b"] * 30], [0.25, 0.75], seed=1)[i] for i in range(4000)]
  with pytest.raises(ConfigError, match="non-negative"):
    Mixture([["a"]], [0.0])


def test_tfds_datasets_through_the_data_source_api(tmp_path):
  """The embedded data is itself a TFDS dataset prepared in a data dir: read it as any TFDS dataset."""
  import ml_collections

  from vlm_jax.data import DATASETS, synthetic

  synthetic.load(64, log=lambda *a: None)
  config = ml_collections.ConfigDict(
    dict(
      name="tfds",
      tfds_name="synthetic_shapes/64px_seed0",
      data_dir=synthetic.default_data_dir(),
      caption_key="caption",
    )
  )
  data = DATASETS.get("tfds")(config)
  example, reference = data.test[3], synthetic.load(64, log=lambda *a: None)[0]["test"][3]
  assert (
    example["caption"] == reference["caption"].decode() and example["shape"] == reference["shape"]
  )
  assert data.class_names["shape"] == synthetic.SHAPES and len(data.train) == 50_000
  with pytest.raises(ConfigError, match=r"tfds build cifar10 --data_dir .*nowhere"):
    DATASETS.get("tfds")(
      ml_collections.ConfigDict(
        dict(name="tfds", tfds_name="cifar10", data_dir=str(tmp_path / "nowhere"))
      )
    )


def test_a_mixture_config_combines_datasets_by_weight():
  import ml_collections

  from vlm_jax.data import DATASETS, synthetic

  config = ml_collections.ConfigDict(
    dict(
      name="mixture",
      image_size=64,
      seed=0,
      max_objects=1,
      data_dir=synthetic.default_data_dir(),
      sources=[
        dict(name="embedded", weight=0.8),
        dict(
          name="tfds", tfds_name="synthetic_shapes/64px_seed0", caption_key="caption", weight=0.2
        ),
      ],
    )
  )
  data = DATASETS.get("mixture")(config)
  from_tfds = np.mean(
    ["key" in data.train[i] for i in range(1000)]
  )  # only the TFDS view adds a key
  assert abs(from_tfds - 0.2) < 0.05 and data.class_names["shape"] == synthetic.SHAPES
  assert data.tokenizer_path and "0.8 x the embedded" in data.description


def test_data_bench_reports_throughput():
  from vlm_jax.tools import input_bench as bench

  result = bench.measure(helpers.micro_config(), batches=2, warmup=1)
  assert result["images_per_s"] > 0 and result["batch_size"] == 16 and result["skipped"] == {}
