"""Tokenizers that need no download. Ids are int32; 0 is padding.

Every tokenizer encodes to [bos, ..., eos, pad...] of a fixed length, truncating before the eos (the text
tower pools at it), and has pad_id, bos_id, eos_id, mask_id and vocab_size.
"""
import io
import os

import numpy as np

from vlm_jax.registry import ConfigError


class _FixedLength:

  def _frame(self, body: np.ndarray, max_len: int) -> np.ndarray:
    if max_len < 3:
      raise ValueError(f"max_len {max_len} leaves no room for text between bos and eos")
    body = body[: max_len - 2]
    ids = np.full(max_len, self.pad_id, np.int32)
    ids[0] = self.bos_id
    ids[1:1 + len(body)] = body
    ids[1 + len(body)] = self.eos_id
    return ids

  def encode_batch(self, texts, max_len: int) -> np.ndarray:
    return np.stack([self.encode(t, max_len) for t in texts]) if texts else np.zeros((0, max_len), np.int32)


class ByteTokenizer(_FixedLength):
  """UTF-8 bytes shifted past four special ids. Works for any text, with no vocabulary file."""
  pad_id, bos_id, eos_id, mask_id = 0, 1, 2, 3
  _offset = 4
  vocab_size = 256 + _offset

  def encode(self, text: str, max_len: int) -> np.ndarray:
    return self._frame(np.frombuffer(text.encode("utf-8"), np.uint8).astype(np.int32) + self._offset, max_len)

  def decode(self, ids) -> str:
    ids = np.asarray(ids)
    return bytes((ids[ids >= self._offset] - self._offset).astype(np.uint8).tolist()).decode("utf-8", "replace")


class SentencePieceTokenizer(_FixedLength):
  """A SentencePiece model whose ids 0-3 are pad/unk/bos/eos (as `train_sentencepiece` makes them)."""

  def __init__(self, path: str):
    import sentencepiece  # pylint: disable=import-outside-toplevel
    if not os.path.exists(path):
      raise ConfigError(f"SentencePiece model {path!r} not found; set data.tokenizer_path")
    self.path = path
    self._sp = sentencepiece.SentencePieceProcessor(model_file=path)
    self.pad_id, self.bos_id, self.eos_id = self._sp.pad_id(), self._sp.bos_id(), self._sp.eos_id()
    if min(self.pad_id, self.bos_id, self.eos_id) < 0:
      raise ConfigError(f"SentencePiece model {path!r} lacks pad/bos/eos ids; retrain it with pad_id/bos_id/eos_id")
    self.mask_id = self._sp.piece_to_id("<mask>")
    self.vocab_size = self._sp.get_piece_size()

  def encode(self, text: str, max_len: int) -> np.ndarray:
    return self._frame(np.asarray(self._sp.encode(text), np.int32), max_len)

  def decode(self, ids) -> str:
    ids = [int(i) for i in np.asarray(ids) if i not in (self.pad_id, self.bos_id, self.eos_id)]
    return self._sp.decode(ids)


def train_sentencepiece(texts, path: str, vocab_size: int = 400):
  """Trains a BPE SentencePiece model with byte fallback (so any text encodes) and writes it to `path`."""
  import sentencepiece  # pylint: disable=import-outside-toplevel
  proto = io.BytesIO()
  sentencepiece.SentencePieceTrainer.train(
      sentence_iterator=iter(texts), model_writer=proto, vocab_size=vocab_size, model_type="bpe",
      byte_fallback=True, character_coverage=1.0, pad_id=0, unk_id=1, bos_id=2, eos_id=3,
      user_defined_symbols=["<mask>"], minloglevel=2)
  with open(path + ".tmp", "wb") as f:
    f.write(proto.getvalue())
  os.replace(path + ".tmp", path)


TOKENIZERS = ("bytes", "sentencepiece")


def check_tokenizer_name(name: str):
  if name not in TOKENIZERS:
    raise ConfigError(f"unknown tokenizer {name!r}; known tokenizers: {', '.join(TOKENIZERS)}")


def get_tokenizer(name: str, path: str = "", dataset_tokenizer: str | None = None):
  """name 'bytes', or 'sentencepiece' with a model path (empty: the dataset's own model)."""
  check_tokenizer_name(name)
  if name == "bytes":
    return ByteTokenizer()
  path = path or dataset_tokenizer
  if not path:
    raise ConfigError("data.tokenizer is 'sentencepiece' but data.tokenizer_path is empty and the dataset ships "
                      "no tokenizer model; set data.tokenizer_path")
  return SentencePieceTokenizer(path)
