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

import collections
import json

from absl import flags
import grain
import numpy as np

from vlm_jax.data import sources, streaming
from vlm_jax.errors import ConfigError

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
  worker_processes: int = 0,
):
  """An endless, checkpointable iterator of local batches (dicts of NumPy arrays).

  `worker_processes` > 0 decodes in that many grain worker processes (each with `num_threads` threads)
  instead of threads of this process, for hosts whose decoding is bound by the GIL; the element order, and
  so every batch, is the same. A checkpoint's iterator position is only valid with the same setting.
  """
  if global_batch % process_count:
    raise ConfigError(
      f"data.batch_size={global_batch} does not divide over {process_count} processes; make it a multiple"
    )
  local_batch = global_batch // process_count
  if isinstance(source, streaming.ShardStream):
    if worker_processes:
      raise ConfigError(
        "data.worker_processes is for random-access data (prepared ArrayRecord, folders, TFDS); "
        "streamed tar shards decode on data.num_threads threads: set data.worker_processes=0"
      )
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
      return e  # counted by `keep`, in this process (a worker process's counts would be lost)

  def keep(example) -> bool:
    if isinstance(example, sources.SampleError):
      sources.SKIPS.add(example)
      return False
    return True

  dataset = (
    grain.MapDataset.range(_FOREVER)
    .map(load)
    .to_iter_dataset(
      grain.ReadOptions(
        num_threads=num_threads, prefetch_buffer_size=max(prefetch, 1) * local_batch
      )
    )
  )
  if worker_processes:
    if (
      not flags.FLAGS.is_parsed()
    ):  # grain reads its absl flags; used as a library, take their defaults
      flags.FLAGS.mark_as_parsed()
    dataset = dataset.mp_prefetch(
      grain.MultiprocessingOptions(
        num_workers=worker_processes, per_worker_buffer_size=max(prefetch, 1) * local_batch
      )
    )
  return iter(dataset.filter(keep).batch(local_batch, drop_remainder=True))


class DevicePrefetch:
  """Keeps `size` batches on their way to the devices while the step runs (the transfer of batch n+size
  is issued right after batch n is handed out), and stays checkpointable at the position of the batches
  handed out: `get_state()` is the wrapped iterator's state after the last batch returned, not after the
  ones still in flight, so a resumed run reads exactly the batches the interrupted one had not trained on.
  """

  def __init__(self, iterator, to_device, size: int = 2):
    self.iterator, self.to_device, self.size = iterator, to_device, max(1, size)
    self._in_flight = collections.deque()  # (device batch, the wrapped iterator's state after it)
    self._state = _encoded_state(iterator)

  def __iter__(self):
    return self

  def __next__(self):
    while len(self._in_flight) < self.size:
      local = next(self.iterator)
      self._in_flight.append((self.to_device(local), _encoded_state(self.iterator)))
    batch, self._state = self._in_flight.popleft()
    return batch

  # grain's checkpoint handler saves and restores iterators that are not its own through these three.
  def get_state(self) -> bytes:
    return self._state

  def set_state(self, state: bytes):
    self._in_flight.clear()
    if isinstance(self.iterator, grain.DatasetIterator):
      self.iterator.set_state(json.loads(state))
    else:
      self.iterator.set_state(state)
    self._state = state

  def start_prefetch(self):
    start = getattr(self.iterator, "start_prefetch", None)
    if start:
      start()

  def close(self):
    self._in_flight.clear()
    close = getattr(self.iterator, "close", None)
    if close:
      close()


def _encoded_state(iterator) -> bytes:
  state = iterator.get_state()
  return state if isinstance(state, bytes) else json.dumps(state, indent=4).encode()
