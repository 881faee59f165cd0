"""Streaming tar shards: every sample exactly once per epoch across processes and reader threads, a
resumed stream yields exactly the remaining samples, and a micro CLIP trains from streamed shards of real
images and resumes bit-identically, evaluated zero-shot on an image folder."""

import collections
import os

import jax
import ml_collections
import numpy as np
from PIL import Image
import pytest

from tests import helpers
from tests.test_real_data import REAL_IMAGES, png, real_image_samples, write_tar
from vlm_jax.assembly import experiment
from vlm_jax.core import checkpoint
from vlm_jax.data import DATASETS, sources, streaming, tokenizers, transforms
from vlm_jax.errors import ConfigError
from vlm_jax.train import trainer

SIZES = [3, 5, 4, 6, 2, 5, 4]  # unequal shards, as web shards are


@pytest.fixture
def shards(tmp_path):
  for s, n in enumerate(SIZES):
    write_tar(
      tmp_path / f"{s:02d}.tar",
      [
        (f"k{i}", {"png": png((s * 30, i * 40, 9)), "txt": f"s{s} i{i}".encode()}) for i in range(n)
      ],
    )
  return sources.resolve(str(tmp_path / f"{{00..{len(SIZES) - 1:02d}}}.tar"))


def _epoch_keys(stream, process_count, seed=3):
  """{epoch: [keys]} emitted by all processes, pulled until every reader and buffer is past epoch 1."""
  keys = collections.defaultdict(list)
  for p in range(process_count):
    samples = stream.samples(seed, p, process_count)
    while True:
      state = samples.state()
      if min(c[0] for c in state["cursors"]) >= 2 and all(a[1] >= 2 for a in state["buffer"]):
        break
      _, (_, epoch, _, _), sample = samples.next()
      keys[epoch].append(sample["key"])
    samples.close()
  return keys


@pytest.mark.parametrize("process_count,workers,buffer", [(1, 1, 0), (2, 3, 5), (3, 2, 8)])
def test_every_sample_exactly_once_per_epoch_across_processes_and_workers(
  shards, process_count, workers, buffer
):
  everything = sorted(f"{s:02d}.tar:k{i}" for s, n in enumerate(SIZES) for i in range(n))
  keys = _epoch_keys(
    streaming.ShardStream(shards, shuffle_buffer=buffer, workers=workers), process_count
  )
  for epoch in (0, 1):
    assert sorted(keys[epoch]) == everything, epoch
  assert keys[0] != keys[1]  # a new shard order (and shuffle) every epoch
  if buffer:
    in_order = [
      k
      for url in streaming.ShardStream(shards).shards(0, 3, 0, 1)
      for k in (s["key"] for s in sources.read_tar(url))
    ]
    assert keys[0] != in_order[: len(keys[0])]


def test_readers_need_enough_shards_unless_resampled(shards):
  with pytest.raises(ConfigError, match="7 shards cannot feed 8 readers"):
    streaming.ShardStream(shards, workers=4).samples(0, 0, 2)
  resampled = streaming.ShardStream(shards, workers=4, resampled=True)
  samples = resampled.samples(0, 1, 2)
  keys = [samples.next()[2]["key"] for _ in range(40)]
  samples.close()
  assert set(keys) <= {f"{s:02d}.tar:k{i}" for s, n in enumerate(SIZES) for i in range(n)}
  draws = [resampled.shards(epoch, 0, reader, 8) for epoch in range(4) for reader in range(8)]
  assert (
    all(len(d) == 1 for d in draws) and len({d[0] for d in draws}) > 3
  )  # with replacement, varying


def _keyed_preprocess():
  pre = transforms.Preprocess(8, tokenizers.ByteTokenizer(), 12, crop_scale=(0.5, 1.0))

  def preprocess(sample, rng):
    out = pre(sample, rng)
    out["key"] = np.frombuffer(sample["key"].ljust(16).encode(), np.uint8)
    return out

  return preprocess


def test_a_resumed_stream_yields_exactly_the_remaining_samples(shards, tmp_path):
  stream = streaming.ShardStream(shards, shuffle_buffer=6, workers=2)
  make = lambda: streaming.BatchIterator(
    stream, _keyed_preprocess(), local_batch=4, seed=1, num_threads=2
  )
  uninterrupted = make()
  reference = [
    next(uninterrupted) for _ in range(12)
  ]  # 48 samples: into the second epoch (29 per epoch)
  uninterrupted.close()
  first = make()
  for _ in range(5):
    next(first)
  # Through the checkpoint the trainer writes (orbax + grain's handler), mid-epoch, mid-shard.
  ckpt = checkpoint.Checkpointer(str(tmp_path / "ckpt"), async_save=False)
  ckpt.save(5, {"x": np.zeros(2, np.float32)}, first)
  first.close()
  resumed = make()
  ckpt.restore(5, {"x": jax.numpy.zeros(2)}, resumed)
  ckpt.close()
  for want in reference[5:]:
    got = next(resumed)
    for key in want:  # the same samples, with the same augmentation draws
      np.testing.assert_array_equal(got[key], want[key], err_msg=key)
  resumed.close()


def test_bad_streamed_samples_are_skipped_and_counted(tmp_path):
  write_tar(
    tmp_path / "a.tar",
    [
      ("k0", {"png": png((1, 2, 3)), "txt": b"good"}),
      ("k1", {"png": b"not an image", "txt": b"x"}),
      ("k2", {"txt": b"no image"}),
      ("k3", {"png": png((4, 5, 6)), "txt": b" "}),
    ]
    + [(f"g{i}", {"png": png((i, 9, 9)), "txt": b"fine"}) for i in range(5)],
  )
  sources.SKIPS.reset()
  iterator = streaming.BatchIterator(
    streaming.ShardStream([str(tmp_path / "a.tar")], shuffle_buffer=0, workers=1),
    transforms.Preprocess(8, tokenizers.ByteTokenizer(), 12),
    local_batch=3,
    seed=0,
    num_threads=1,
  )
  batches = [next(iterator) for _ in range(2)]  # 6 good samples from the first epoch's 6
  iterator.close()
  assert all(b["image"].shape == (3, 8, 8, 3) for b in batches)
  tokenizer = tokenizers.ByteTokenizer()
  assert {tokenizer.decode(t) for b in batches for t in b["text"]} <= {"good", "fine"}
  # Readers run ahead into later epochs, so a bad sample may already be counted again: at least once each.
  skipped = sources.SKIPS.snapshot()
  assert (
    set(skipped) == {"undecodable_image", "missing_image", "empty_caption"}
    and min(skipped.values()) >= 1
  )
  with pytest.raises(ConfigError, match="shards needs data.shards"):
    DATASETS.get("shards")(ml_collections.ConfigDict({"name": "shards"}))
  with pytest.raises(ConfigError, match="b.tar"):
    DATASETS.get("shards")(
      ml_collections.ConfigDict({"name": "shards", "shards": str(tmp_path / "{a,b}.tar")})
    )
  with pytest.raises(ConfigError, match="random access.*prepare"):
    DATASETS.get("mixture")(
      ml_collections.ConfigDict(
        {"name": "mixture", "sources": [{"name": "shards", "shards": str(tmp_path / "a.tar")}]}
      )
    )


def _image_folder(root):
  """Class folders of real images: each real image, flipped or not, is a class of two images."""
  for i, path in enumerate(REAL_IMAGES[:8]):
    folder = root / f"class_{i}"
    folder.mkdir(parents=True)
    image = Image.open(path).convert("RGB")
    for j, im in enumerate((image, image.transpose(Image.Transpose.FLIP_LEFT_RIGHT))):
      im.save(folder / f"{j}.png")
  (root.parent / "names.txt").write_text(
    "".join(
      f"class_{i}\t{os.path.basename(p).rsplit('.', 1)[0].replace('_', ' ')}\n"
      for i, p in enumerate(REAL_IMAGES[:8])
    )
  )


def test_a_micro_clip_trains_from_streamed_shards_and_resumes_exactly(tmp_path):
  samples = real_image_samples()
  for shard in range(4):
    write_tar(tmp_path / f"shard-{shard}.tar", samples[shard::4])
  _image_folder(tmp_path / "folder" / "images")
  overrides = {
    "data.name": "shards",
    "data.shards": str(tmp_path / "shard-{0..3}.tar"),
    "data.workers": 2,
    "data.shuffle_buffer": 16,
    "data.tokenizer": "bytes",
    "model.text.max_len": 32,
    "train.duration": "30 steps",
    "train.log_every": "1 steps",
    "train.checkpoint_every": "10 steps",
    "optim.lr": 3e-3,
    "optim.warmup": "5 steps",
    # Whole images: 30 steps memorise the 8 icons (zero-shot 0.62); with CLIP's random crop they reach 0.25.
    "data.augment.crop_scale": None,
    "evals": {
      "zero_shot": {
        "data": {
          "name": "folder",
          "path": str(tmp_path / "folder" / "images"),
          "classnames": str(tmp_path / "folder" / "names.txt"),
        },
        "templates": ["the {} icon"],
        "every": "0 steps",
      }
    },
  }
  config = helpers.micro_config(**overrides)
  final = trainer.train(config, str(tmp_path / "run"), log=lambda *a: None)
  losses = helpers.losses(tmp_path / "run", "loss")
  assert losses[-1] < 0.75 * losses[0], losses
  assert final["eval/zero_shot/label_top1"] > 0.25, final  # 8 classes: chance 0.125

  class Interrupt(Exception):
    pass

  def interrupt_after_step_12(line):
    if line.startswith("step 12/"):
      raise Interrupt(line)

  with pytest.raises(Interrupt):
    trainer.train(
      helpers.micro_config(**overrides), str(tmp_path / "resumed"), log=interrupt_after_step_12
    )
  assert checkpoint.all_steps(str(tmp_path / "resumed" / "checkpoints")) == [10]
  trainer.train(helpers.micro_config(**overrides), str(tmp_path / "resumed"), log=lambda *a: None)
  reference, resumed = (
    helpers.load_params(tmp_path / "run"),
    helpers.load_params(tmp_path / "resumed"),
  )
  for path in reference:
    np.testing.assert_array_equal(resumed[path], reference[path], err_msg=path)


def test_eval_records_are_filed_under_the_evaluators_own_dataset():
  from vlm_jax.eval import harness

  config = helpers.micro_config()
  assert harness.dataset_name(config) == "embedded_64px"
  assert (
    harness.dataset_name(config, {"data": {"name": "folder", "path": "/data/imagenette/val/"}})
    == "folder_val"
  )
  settings = harness.fitting_tasks(
    helpers.micro_config(**{"evals": {"zero_shot": {"data": {"name": "folder"}}}}),
    type("M", (), {"encode_image": 0, "encode_text": 0})(),
    ["zero_shot"],
  )
  assert (
    "label_keys" not in settings["zero_shot"]
  )  # the folder's own labels, not the embedded data's


@pytest.mark.parametrize(
  "recipe,extra",
  [
    ("clip_b32.py", {}),
    pytest.param(
      "coca_b32.py",  # micro: the text tower's width, a one-layer decoder, few queries
      {
        "model.embed_dim": 64,
        "model.caption_queries": 4,
        "model.pool_heads": 2,
        "model.decoder": {"depth": 1, "num_heads": 2, "mlp_dim": 128},
      },
      marks=pytest.mark.ci,  # CoCa's 49408-way caption head: a minute on 2 cores
    ),
  ],
)
def test_clip_recipes_train_on_user_shards_with_clips_tokenizer_and_no_tokenizer_flag(
  tmp_path, recipe, extra
):
  """The CLIP-family recipes (not :tiny) on the user's own shards need no tokenizer path: CLIP's BPE ships
  with vlm_jax, and the captions they train on are tokenized as open_clip tokenizes them."""
  from tests.test_tokenizers import _open_clip_tokenizer_module  # pylint: disable=import-outside-toplevel

  samples = real_image_samples()
  write_tar(tmp_path / "shard-0.tar", samples[::2])
  write_tar(tmp_path / "shard-1.tar", samples[1::2])
  config = helpers.micro_config(
    os.path.join(helpers.ROOT, "experiments", recipe),
    **{
      **extra,
      "data.name": "shards",
      "data.shards": str(tmp_path / "shard-{0..1}.tar"),
      "data.augment.crop_scale": None,
      "train.duration": "2 steps",
      "evals": {},
    },
  )
  exp = experiment.Experiment(config, log=lambda *a: None)
  assert (
    isinstance(exp.tokenizer, tokenizers.ClipBpeTokenizer) and exp.tokenizer.vocab_size == 49408
  )
  open_clip_tokenizer, vocab = _open_clip_tokenizer_module()
  captions = [fields["txt"].decode() for _, fields in samples[:4]]
  np.testing.assert_array_equal(
    exp.tokenizer.encode_batch(captions, 16),
    open_clip_tokenizer.SimpleTokenizer(vocab)(captions, context_length=16).numpy(),
  )
  trainer.train(config, str(tmp_path / "run"), log=lambda *a: None)
  assert helpers.checkpoint_steps(tmp_path / "run") == [2]
