"""Streaming training data from webdataset tar shards, read in order (no random access, no prepare step).

Readers: each process runs `workers` reader threads, so there are R = processes x workers readers. In
epoch e the shard list is permuted by (seed, e) and reader r reads shards r, r+R, r+2R, ... of that order,
so every sample of every shard is read exactly once per epoch across all readers (readers with fewer
samples start their next epoch earlier, as in webdataset). With `resampled=True` each reader instead
draws its shards with replacement (an "epoch" is then len(shards)/R draws), which needs no shard count
that divides and suits very unequal shards.

A process interleaves its readers round-robin into one rolling shuffle buffer (`shuffle_buffer` samples):
every new sample replaces a uniformly drawn one, which is emitted. Decoding and augmentation then run on
a thread pool, one batch at a time, each sample with its own RNG from (seed, process, position).

Position: everything above is deterministic, so the iterator's state is small -- each reader's cursor
(epoch, shard slot, sample offset), the shuffle buffer as sample *addresses* (reader, epoch, slot,
offset), the shuffle RNG and the position. Restoring re-reads the few shards the buffered samples came
from, so a resumed run emits exactly the samples an uninterrupted one would have, neither repeating nor
skipping any. The state is saved with the model (`get_state`/`set_state`, as grain iterators), one file
per process: resume with the same process and worker counts.
"""

import collections
import concurrent.futures
import json
import math
import queue
import threading

import numpy as np

from vlm_jax.data import sources
from vlm_jax.errors import ConfigError

_STOP_POLL_S = 0.1


class ShardStream:
  """The train split of `data.name=shards`: tar shard URLs read as a stream. len() is `num_samples`
  when the user gives it (for durations in epochs), else 0 (unknown)."""

  def __init__(
    self,
    urls,
    *,
    shuffle_buffer: int = 1000,
    workers: int = 2,
    resampled: bool = False,
    num_samples: int = 0,
  ):
    if not urls:
      raise ConfigError(
        "data.shards names no shard; give a pattern such as '/data/laion/{00000..00099}.tar'"
      )
    if workers < 1 or shuffle_buffer < 0:
      raise ConfigError(
        f"data.workers must be >= 1 and data.shuffle_buffer >= 0, got {workers}, {shuffle_buffer}"
      )
    self.urls, self.shuffle_buffer, self.workers = list(urls), shuffle_buffer, workers
    self.resampled, self.num_samples = resampled, num_samples

  def __len__(self):
    return self.num_samples

  def shards(self, epoch: int, seed: int, reader: int, num_readers: int):
    """The shard URLs reader `reader` of `num_readers` reads in `epoch`, in order."""
    n = len(self.urls)
    if self.resampled:
      order = np.random.default_rng([seed, epoch, reader, 1]).integers(
        n, size=max(1, math.ceil(n / num_readers))
      )
    else:
      order = np.random.default_rng([seed, epoch]).permutation(n)[reader::num_readers]
    return [self.urls[i] for i in order]

  def samples(
    self, seed: int, process_index: int = 0, process_count: int = 1, state: dict | None = None
  ):
    """The process's shuffled stream of raw samples (no decoding), from `state` when given."""
    readers = process_count * self.workers
    if len(self.urls) < readers and not self.resampled:
      raise ConfigError(
        f"{len(self.urls)} shards cannot feed {readers} readers ({process_count} processes x "
        f"{self.workers} data.workers); use more shards, fewer data.workers, or data.resampled=True"
      )
    return SampleStream(self, seed, process_index, process_count, state)


class Closed(Exception):
  """The stream was closed while a thread waited on it."""


class _Reader:
  """A reader thread: the samples of its shards from a cursor (epoch, slot, offset), into a bounded queue,
  each with its address (reader, epoch, slot, offset)."""

  def __init__(
    self, stream: ShardStream, seed: int, reader: int, num_readers: int, cursor, capacity: int
  ):
    self.queue, self._stop = queue.Queue(capacity), threading.Event()
    args = (stream, seed, reader, num_readers, tuple(cursor))
    self._thread = threading.Thread(target=self._run, args=args, daemon=True)
    self._thread.start()

  def _put(self, item) -> bool:
    while not self._stop.is_set():
      try:
        self.queue.put(item, timeout=_STOP_POLL_S)
        return True
      except queue.Full:
        pass
    return False

  def _run(self, stream, seed, reader, num_readers, cursor):
    epoch, first_slot, skip = cursor
    try:
      while True:
        urls, found = stream.shards(epoch, seed, reader, num_readers), 0
        for slot in range(first_slot, len(urls)):
          for offset, sample in enumerate(sources.read_tar(urls[slot])):
            if offset >= skip:
              found += 1
              if not self._put(((reader, epoch, slot, offset), sample)):
                return
          skip = 0
        if not found and (first_slot, skip) == (0, 0):
          raise ConfigError(
            f"reader {reader} found no usable sample in a whole epoch of its shards "
            f"({', '.join(urls[:3])}...); see the data/skipped counts in the log"
          )
        epoch, first_slot = epoch + 1, 0
    except Exception as e:  # pylint: disable=broad-except  (handed to the consumer, which raises it)
      self._put(e)

  def get(self):
    while True:
      try:
        item = self.queue.get(timeout=_STOP_POLL_S)
        break
      except queue.Empty:
        if self._stop.is_set():
          raise Closed() from None
    if isinstance(item, Exception):
      raise item
    return item

  def stop(self):
    self._stop.set()


class SampleStream:
  """One process's deterministic stream of raw samples: its readers round-robin into a rolling shuffle
  buffer. `next()` -> (position, address, sample); `state()` is JSON-able and restores the stream exactly."""

  def __init__(
    self, stream: ShardStream, seed: int, process_index: int, process_count: int, state=None
  ):
    self.stream, self.seed, self.num_readers = stream, seed, stream.workers * process_count
    first = process_index * stream.workers
    state = state or {
      "position": 0,
      "next": 0,
      "cursors": [[0, 0, 0]] * stream.workers,
      "buffer": [],
      "rng": np.random.PCG64([seed, process_index]).state,
    }
    self.position, self.next_reader = state["position"], state["next"]
    self.cursors = [list(c) for c in state["cursors"]]
    self._rng = np.random.Generator(np.random.PCG64())
    self._rng.bit_generator.state = state["rng"]
    self.addresses = [tuple(a) for a in state["buffer"]]
    self.buffer = self._reread(self.addresses)
    capacity = max(16, 2 * stream.shuffle_buffer // stream.workers)
    self._readers = [
      _Reader(stream, seed, first + w, self.num_readers, self.cursors[w], capacity)
      for w in range(stream.workers)
    ]

  def _reread(self, addresses) -> list:
    """The samples at these addresses, read again from their shards (restoring the shuffle buffer)."""
    wanted = collections.defaultdict(set)
    for reader, epoch, slot, offset in addresses:
      wanted[(reader, epoch, slot)].add(offset)
    found = {}
    for (reader, epoch, slot), offsets in wanted.items():
      url = self.stream.shards(epoch, self.seed, reader, self.num_readers)[slot]
      for offset, sample in enumerate(sources.read_tar(url, skips=sources.Skips())):
        if offset in offsets:
          found[(reader, epoch, slot, offset)] = sample
    missing = [a for a in addresses if a not in found]
    if missing:
      raise ConfigError(
        f"cannot resume the data stream: {len(missing)} buffered samples are no longer in their "
        f"shards (reader, epoch, slot, offset {missing[0]}); did the shards change?"
      )
    return [found[a] for a in addresses]

  def _read(self):
    worker = self.next_reader
    address, sample = self._readers[worker].get()
    self.next_reader = (worker + 1) % len(self._readers)
    self.cursors[worker] = [address[1], address[2], address[3] + 1]
    return address, sample

  def next(self):
    while len(self.buffer) < self.stream.shuffle_buffer:  # filling up (start, or shuffling off)
      address, sample = self._read()
      self.addresses.append(address)
      self.buffer.append(sample)
    if not self.buffer:
      address, sample = self._read()
    else:
      i = int(self._rng.integers(len(self.buffer)))
      address, sample = self.addresses[i], self.buffer[i]
      self.addresses[i], self.buffer[i] = self._read()
    self.position += 1
    return self.position - 1, address, sample

  def state(self) -> dict:
    return {
      "position": self.position,
      "next": self.next_reader,
      "cursors": [list(c) for c in self.cursors],
      "buffer": [list(a) for a in self.addresses],
      "rng": self._rng.bit_generator.state,
    }

  def close(self):
    for reader in self._readers:
      reader.stop()


class BatchIterator:
  """Local batches (dicts of NumPy arrays) from a `ShardStream`: a background thread decodes and augments
  each batch on a thread pool and keeps `prefetch` batches ready, each with the stream state after it.
  Samples whose preprocessing raises `sources.SampleError` are skipped, counted, and replaced by the next.
  Checkpointable like a grain iterator: `get_state()` is the state after the last batch handed out."""

  def __init__(
    self,
    stream: ShardStream,
    preprocess,
    *,
    local_batch: int,
    seed: int,
    process_index: int = 0,
    process_count: int = 1,
    num_threads: int = 8,
    prefetch: int = 2,
  ):
    self.stream, self.preprocess, self.local_batch, self.seed = (
      stream,
      preprocess,
      local_batch,
      seed,
    )
    self.process_index, self.process_count = process_index, process_count
    self._pool = concurrent.futures.ThreadPoolExecutor(max(1, num_threads))
    self._prefetch = max(1, prefetch)
    self._state = None
    self._start()

  def _start(self):
    self._samples = self.stream.samples(
      self.seed, self.process_index, self.process_count, self._state
    )
    self._queue, self._stop = queue.Queue(self._prefetch), threading.Event()
    self._thread = threading.Thread(
      target=self._run, args=(self._samples, self._queue, self._stop), daemon=True
    )
    self._thread.start()

  def _load(self, position, address, sample):
    del address
    rng = np.random.default_rng([self.seed, self.process_index, position])
    try:
      return self.preprocess(sample, rng)
    except sources.SampleError as e:
      sources.SKIPS.add(e)
      return None

  def _run(self, samples, out, stop):
    try:
      while not stop.is_set():
        rows, skipped_in_a_row = [], 0
        while len(rows) < self.local_batch:
          todo = [samples.next() for _ in range(self.local_batch - len(rows))]
          done = [r for r in self._pool.map(lambda s: self._load(*s), todo) if r is not None]
          skipped_in_a_row = 0 if done else skipped_in_a_row + len(todo)
          if skipped_in_a_row > 10 * self.local_batch + 1000:
            raise ConfigError(
              f"the last {skipped_in_a_row} samples were all skipped "
              f"({sources.SKIPS.snapshot()}); is this image-text data?"
            )
          rows += done
        batch = {k: np.stack([r[k] for r in rows]) for k in rows[0]}
        item = (batch, samples.state())
        while not stop.is_set():
          try:
            out.put(item, timeout=_STOP_POLL_S)
            break
          except queue.Full:
            pass
    except Closed:
      return
    except Exception as e:  # pylint: disable=broad-except  (raised in the consumer by __next__)
      out.put(e)

  def __iter__(self):
    return self

  def __next__(self):
    item = self._queue.get()
    if isinstance(item, Exception):
      raise item
    batch, self._state = item
    return batch

  def get_state(self) -> bytes:
    state = self._state or {"position": 0}
    return json.dumps(state).encode()

  def set_state(self, state: bytes):
    state = json.loads(state)
    self.close(pool=False)
    self._state = state if state.get("cursors") else None
    self._start()

  def start_prefetch(self):  # grain's checkpoint handler calls this after set_state
    pass

  def close(self, pool: bool = True):
    self._stop.set()
    self._samples.close()
    if pool:
      self._pool.shutdown(wait=False, cancel_futures=True)
