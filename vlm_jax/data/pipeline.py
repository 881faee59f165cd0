"""grain input pipelines that give every process its rows of each global batch.

The global example order is a function of the seed alone (grain shuffles each epoch differently), and
process p of P reads rows [p*B/P, (p+1)*B/P) of every global batch of B. So a run on any number of
processes sees exactly the batches of a single-process run, and the iterator position (checkpointed
with the model) is one integer that is the same on every process.

A sample whose preprocessing raises `sources.SampleError` (an undecodable image, an empty caption) is
dropped and counted in `sources.SKIPS`; its row is filled by the process's next sample, so with bad
samples the batches of different process counts may differ in those rows.

Streamed tar shards (`streaming.ShardStream`, no random access) go through `streaming.BatchIterator`
instead: same interface, its own order and position (see streaming.py).
"""

import grain
import numpy as np

from vlm_jax.data import sources, streaming

_FOREVER = 2**62


def train_iterator(
  source,
  preprocess,
  *,
  global_batch: int,
  seed: int,
  process_index: int = 0,
  process_count: int = 1,
  num_threads: int = 8,
  prefetch: int = 2,
):
  """An endless, checkpointable iterator of local batches (dicts of NumPy arrays)."""
  if global_batch % process_count:
    raise ValueError(f"global batch {global_batch} does not divide over {process_count} processes")
  local_batch = global_batch // process_count
  if isinstance(source, streaming.ShardStream):
    return streaming.BatchIterator(
      source,
      preprocess,
      local_batch=local_batch,
      seed=seed,
      process_index=process_index,
      process_count=process_count,
      num_threads=num_threads,
      prefetch=prefetch,
    )
  stream = grain.MapDataset.source(source).seed(seed).shuffle().repeat()

  def load(k):
    step, row = divmod(k, local_batch)
    position = step * global_batch + process_index * local_batch + row
    try:
      return preprocess(stream[position], np.random.default_rng([seed, position]))
    except sources.SampleError as e:
      sources.SKIPS.add(e)
      return None

  dataset = (
    grain.MapDataset.range(_FOREVER)
    .map(load)
    .to_iter_dataset(
      grain.ReadOptions(
        num_threads=num_threads, prefetch_buffer_size=max(prefetch, 1) * local_batch
      )
    )
  )
  return iter(dataset.filter(lambda x: x is not None).batch(local_batch, drop_remainder=True))
