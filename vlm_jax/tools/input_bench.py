r"""Input pipeline throughput: decoded + augmented examples per second with the configured threads.

  python -m vlm_jax.tools.input_bench --config experiments/clip_b32.py:tiny [--batches 20] [--config.data.num_threads=4]

Prints one JSON line: images/s over the timed batches (after `--warmup` batches), the batch size, the
thread count and the skipped samples. Compare it with the train step's images/s (`vlm_jax.tools.bench`): when the
pipeline is faster, the prefetching pipeline keeps the step fed.
"""

import json
import time

from absl import app, flags

from vlm_jax.cli import FLAGS, fail, parse_flags

flags.DEFINE_integer("batches", 20, "Timed batches.")
flags.DEFINE_integer("warmup", 3, "Batches before timing (thread start-up, first file opens).")


def measure(config, batches: int = 20, warmup: int = 3) -> dict:
  from vlm_jax import builtins  # noqa: F401  pylint: disable=import-outside-toplevel,unused-import  (registers the built-ins)
  from vlm_jax.data import DATASETS, pipeline, sources, tokenizers, transforms  # pylint: disable=import-outside-toplevel

  data = DATASETS.get(config.data.name)(config.data)
  tokenizer = tokenizers.get_tokenizer(
    config.data.tokenizer, config.data.get("tokenizer_path", ""), data.tokenizer_path
  )
  preprocess = transforms.Preprocess.from_config(config, tokenizer, train=True)
  sources.SKIPS.reset()
  iterator = pipeline.train_iterator(
    data.train,
    preprocess,
    global_batch=config.batch_size,
    seed=config.seed,
    num_threads=config.data.num_threads,
    worker_processes=config.data.get("worker_processes", 0),
  )
  for _ in range(warmup):
    next(iterator)
  start = time.perf_counter()
  for _ in range(batches):
    next(iterator)
  seconds = time.perf_counter() - start
  return {
    "images_per_s": batches * config.batch_size / seconds,
    "batch_size": config.batch_size,
    "num_threads": config.data.num_threads,
    "worker_processes": config.data.get("worker_processes", 0),
    "batches": batches,
    "seconds": seconds,
    "skipped": sources.SKIPS.snapshot(),
    "data": data.description,
  }


def main(argv):
  del argv
  if FLAGS.config is None:
    fail("--config is required")
  print(json.dumps(measure(FLAGS.config, FLAGS.batches, FLAGS.warmup)))


if __name__ == "__main__":
  app.run(main, flags_parser=parse_flags)
