"""Tokenizers that need no download: bytes, SentencePiece, and those of imported models (CLIP's BPE,
SigLIP's SentencePiece conventions), read from local files. Ids are int32.

Every tokenizer encodes to a fixed length, truncating so that the end-of-text token is kept (the text
tower pools at it), and has pad_id, bos_id (None if it adds none), eos_id, mask_id and vocab_size.
"""

import functools
import gzip
import html
import io
import os
import string

import numpy as np

from vlm_jax import storage
from vlm_jax.errors import ConfigError


class TextCounts:
  """How many texts were encoded, and how many were cut to fit max_len: a silent loss the trainer reports.
  Counts are approximate under threads (no lock on the hot path); they only feed a log line."""

  def __init__(self):
    self.encoded = self.cut = 0

  def note(self, length: int, room: int):
    self.encoded += 1
    self.cut += length > room


TEXT_COUNTS = TextCounts()


class _FixedLength:
  def _frame(self, body: np.ndarray, max_len: int) -> np.ndarray:
    if max_len < 3:
      raise ConfigError(
        f"data.max_len={max_len} leaves no room for text between bos and eos; raise it"
      )
    TEXT_COUNTS.note(len(body), max_len - 2)
    body = body[: max_len - 2]
    ids = np.full(max_len, self.pad_id, np.int32)
    ids[0] = self.bos_id
    ids[1 : 1 + len(body)] = body
    ids[1 + len(body)] = self.eos_id
    return ids

  def encode_batch(self, texts, max_len: int) -> np.ndarray:
    return (
      np.stack([self.encode(t, max_len) for t in texts])
      if texts
      else np.zeros((0, max_len), np.int32)
    )


class ByteTokenizer(_FixedLength):
  """UTF-8 bytes shifted past four special ids. Works for any text, with no vocabulary file."""

  pad_id, bos_id, eos_id, mask_id = 0, 1, 2, 3
  _offset = 4
  vocab_size = 256 + _offset

  def encode(self, text: str, max_len: int) -> np.ndarray:
    return self._frame(
      np.frombuffer(text.encode("utf-8"), np.uint8).astype(np.int32) + self._offset, max_len
    )

  def decode(self, ids) -> str:
    ids = np.asarray(ids)
    return bytes((ids[ids >= self._offset] - self._offset).astype(np.uint8).tolist()).decode(
      "utf-8", "replace"
    )

  def word_starts(self, ids) -> np.ndarray:
    """True at tokens that begin a word: a non-space byte after a space or a special token."""
    ids = np.asarray(ids)
    space = ids == ord(" ") + self._offset
    previous = np.concatenate([[True], (space | (ids < self._offset))[:-1]])
    return previous & ~space


class SentencePieceTokenizer(_FixedLength):
  """A SentencePiece model whose ids 0-3 are pad/unk/bos/eos (as `train_sentencepiece` makes them)."""

  def __init__(self, path: str):
    import sentencepiece  # pylint: disable=import-outside-toplevel

    if not storage.exists(path):
      raise ConfigError(f"SentencePiece model {path!r} not found; set data.tokenizer_path")
    self.path = path
    self._sp = sentencepiece.SentencePieceProcessor(model_proto=storage.read_bytes(path))
    self.pad_id, self.bos_id, self.eos_id = self._sp.pad_id(), self._sp.bos_id(), self._sp.eos_id()
    if min(self.pad_id, self.bos_id, self.eos_id) < 0:
      raise ConfigError(
        f"SentencePiece model {path!r} lacks pad/bos/eos ids; retrain it with pad_id/bos_id/eos_id"
      )
    self.mask_id = self._sp.piece_to_id("<mask>")
    self.vocab_size = self._sp.get_piece_size()
    self._starts_word = _sentencepiece_word_starts(self._sp)

  def encode(self, text: str, max_len: int) -> np.ndarray:
    return self._frame(np.asarray(self._sp.encode(text), np.int32), max_len)

  def word_starts(self, ids) -> np.ndarray:
    return self._starts_word[np.asarray(ids)]

  def decode(self, ids) -> str:
    ids = [int(i) for i in np.asarray(ids) if i not in (self.pad_id, self.bos_id, self.eos_id)]
    return self._sp.decode(ids)


def train_sentencepiece(texts, path: str, vocab_size: int = 400, hard_vocab_limit: bool = True):
  """Trains a BPE SentencePiece model with byte fallback (so any text encodes) and writes it to `path`.
  hard_vocab_limit=False: `vocab_size` is an upper bound (a small corpus may run out of merges first)."""
  import sentencepiece  # pylint: disable=import-outside-toplevel

  proto = io.BytesIO()
  sentencepiece.SentencePieceTrainer.train(
    sentence_iterator=iter(texts),
    model_writer=proto,
    vocab_size=vocab_size,
    model_type="bpe",
    byte_fallback=True,
    character_coverage=1.0,
    pad_id=0,
    unk_id=1,
    bos_id=2,
    eos_id=3,
    user_defined_symbols=["<mask>"],
    hard_vocab_limit=hard_vocab_limit,
    minloglevel=2,
  )
  with open(path + ".tmp", "wb") as f:
    f.write(proto.getvalue())
  os.replace(path + ".tmp", path)


def _sentencepiece_word_starts(sp) -> np.ndarray:
  """[vocab] bool: pieces that begin a word (SentencePiece marks them with '▁'); special pieces count as
  word starts so that a word never spans one."""
  return np.array(
    [
      sp.id_to_piece(i).startswith("\u2581") or sp.is_control(i) or sp.is_unknown(i)
      for i in range(sp.get_piece_size())
    ]
  )


class SiglipTokenizer:
  """SentencePiece with SigLIP's conventions (HF `SiglipTokenizer`, big_vision): text lower-cased, stripped of
  punctuation and runs of whitespace, no bos, `</s>` appended, padded with `</s>` to the fixed length."""

  bos_id = None

  def __init__(self, path: str):
    import sentencepiece  # pylint: disable=import-outside-toplevel

    path = storage.join(path, "spiece.model") if storage.isdir(path) else path
    if not storage.exists(path):
      raise ConfigError(
        f"SentencePiece model {path!r} not found; set data.tokenizer_path to SigLIP's spiece.model"
      )
    self.path = path
    self._sp = sentencepiece.SentencePieceProcessor(model_proto=storage.read_bytes(path))
    self.eos_id = self.pad_id = self._sp.piece_to_id("</s>")
    self.mask_id = -1
    self.vocab_size = self._sp.get_piece_size()
    self._starts_word = _sentencepiece_word_starts(self._sp)

  def word_starts(self, ids) -> np.ndarray:
    return self._starts_word[np.asarray(ids)]

  @staticmethod
  def canonicalize(text: str) -> str:
    text = text.lower().translate(str.maketrans("", "", string.punctuation))
    return " ".join(text.split())

  def encode(self, text: str, max_len: int) -> np.ndarray:
    body = self._sp.encode(self.canonicalize(text))
    TEXT_COUNTS.note(len(body), max_len - 1)
    body = body[: max_len - 1]
    ids = np.full(max_len, self.pad_id, np.int32)
    ids[: len(body)] = body
    ids[len(body)] = self.eos_id
    return ids

  def encode_batch(self, texts, max_len: int) -> np.ndarray:
    return _FixedLength.encode_batch(self, texts, max_len)

  def decode(self, ids) -> str:
    ids = [int(i) for i in np.asarray(ids)]
    if self.eos_id in ids:
      ids = ids[: ids.index(self.eos_id)]
    return self._sp.decode(ids)


@functools.lru_cache
def _bytes_to_unicode():
  """OpenAI CLIP's reversible map from bytes to printable unicode characters."""
  bs = (
    list(range(ord("!"), ord("~") + 1))
    + list(range(ord("¡"), ord("¬") + 1))
    + list(range(ord("®"), ord("ÿ") + 1))
  )
  cs = bs[:]
  n = 0
  for b in range(256):
    if b not in bs:
      bs.append(b)
      cs.append(256 + n)
      n += 1
  return dict(zip(bs, map(chr, cs)))


class ClipBpeTokenizer(_FixedLength):
  """OpenAI CLIP's byte-level BPE (open_clip's `SimpleTokenizer`): ftfy-fixed, lower-cased text, ids
  [<|startoftext|>, ..., <|endoftext|>] padded with 0, as open_clip.tokenize produces them.

  path: `bpe_simple_vocab_16e6.txt.gz`, a `merges.txt`, or an HF CLIP folder (its merges.txt and
  vocab.json). Only the first 48894 merges are used, as in CLIP.
  """

  pad_id = 0
  pad_is_token = (
    True  # id 0 is "!": a text tower must not mask it as padding (model.text.pad_id=-1)
  )
  mask_id = -1

  def __init__(self, path: str):
    import regex  # pylint: disable=import-outside-toplevel

    vocab_json = None
    if storage.isdir(path):
      vocab_json = storage.join(path, "vocab.json")
      path = storage.join(path, "merges.txt")
    if not storage.exists(path):
      raise ConfigError(
        f"CLIP BPE merges {path!r} not found; set data.tokenizer_path to bpe_simple_vocab_16e6.txt.gz "
        "(it ships with open_clip) or an HF CLIP folder"
      )
    data = storage.read_bytes(path)
    lines = (gzip.decompress(data) if path.endswith(".gz") else data).decode("utf-8").split("\n")
    merges = [tuple(line.split()) for line in lines[1 : 49152 - 256 - 2 + 1] if line.strip()]
    byte_chars = list(_bytes_to_unicode().values())
    vocab = byte_chars + [c + "</w>" for c in byte_chars] + ["".join(m) for m in merges]
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    self.encoder = {token: i for i, token in enumerate(vocab)}
    if vocab_json and storage.exists(vocab_json):
      self.encoder = storage.read_json(vocab_json)
    self.decoder = {i: token for token, i in self.encoder.items()}
    self.ranks = {m: i for i, m in enumerate(merges)}
    self.bos_id, self.eos_id = self.encoder["<|startoftext|>"], self.encoder["<|endoftext|>"]
    self.vocab_size = len(self.encoder)
    self._byte_encoder = _bytes_to_unicode()
    self._byte_decoder = {c: b for b, c in self._byte_encoder.items()}
    self._pattern = regex.compile(
      r"""<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+""",
      regex.IGNORECASE,
    )
    self._cache = {}

  def _bpe(self, token: str) -> list:
    if token in self._cache:
      return self._cache[token]
    word = list(token[:-1]) + [token[-1] + "</w>"]
    while len(word) > 1:
      pairs = {(word[i], word[i + 1]) for i in range(len(word) - 1)}
      best = min(pairs, key=lambda p: self.ranks.get(p, float("inf")))
      if best not in self.ranks:
        break
      merged, i = [], 0
      while i < len(word):
        if i < len(word) - 1 and (word[i], word[i + 1]) == best:
          merged.append(word[i] + word[i + 1])
          i += 2
        else:
          merged.append(word[i])
          i += 1
      word = merged
    self._cache[token] = word
    return word

  def clean(self, text: str) -> str:
    import ftfy  # pylint: disable=import-outside-toplevel

    text = html.unescape(html.unescape(ftfy.fix_text(text))).strip()
    return " ".join(text.split()).lower()

  def tokens(self, text: str) -> list:
    ids = []
    for piece in self._pattern.findall(self.clean(text)):
      piece = "".join(self._byte_encoder[b] for b in piece.encode("utf-8"))
      ids.extend(self.encoder[t] for t in self._bpe(piece))
    return ids

  def encode(self, text: str, max_len: int) -> np.ndarray:
    return self._frame(np.asarray(self.tokens(text), np.int32), max_len)

  def word_starts(self, ids) -> np.ndarray:
    """CLIP's BPE marks word ends ('</w>'): a token starts a word when the one before it ended one."""
    if not hasattr(self, "_ends_word"):
      self._ends_word = np.zeros(max(self.decoder) + 1, bool)
      for i, token in self.decoder.items():
        self._ends_word[i] = token.endswith("</w>") or token.startswith("<|")
    ids = np.asarray(ids)
    return np.concatenate([[True], self._ends_word[ids[:-1]]])

  def decode(self, ids) -> str:
    ids = [int(i) for i in np.asarray(ids)]
    if self.eos_id in ids:
      ids = ids[: ids.index(self.eos_id)]
    text = "".join(self.decoder[i] for i in ids if i != self.bos_id and i in self.decoder)
    return (
      bytearray(self._byte_decoder[c] for c in text)
      .decode("utf-8", "replace")
      .replace("</w>", " ")
      .strip()
    )


class WordPieceTokenizer(_FixedLength):
  """BERT's uncased WordPiece (ViLT, FLAVA): text cleaned, lower-cased, accents stripped, split on whitespace
  and punctuation, then greedy longest-match pieces ('##' continues a word). Ids [CLS] ... [SEP], padded
  with [PAD], as transformers' BertTokenizer produces them. path: vocab.txt or a folder holding it."""

  def __init__(self, path: str):
    path = storage.join(path, "vocab.txt") if storage.isdir(path) else path
    if not storage.exists(path):
      raise ConfigError(
        f"WordPiece vocabulary {path!r} not found; set data.tokenizer_path to BERT's vocab.txt"
      )
    lines = storage.read_text(path).split("\n")
    self.vocab = {line: i for i, line in enumerate(lines) if line}
    self.inverse = {i: t for t, i in self.vocab.items()}
    ids = {
      name: self.vocab.get(name, -1) for name in ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")
    }
    if min(ids.values()) < 0:
      raise ConfigError(f"{path} lacks one of [PAD] [UNK] [CLS] [SEP] [MASK]")
    self.pad_id, self.unk_id, self.bos_id, self.eos_id, self.mask_id = ids.values()
    self.vocab_size = max(self.vocab.values()) + 1
    self._continues = np.zeros(self.vocab_size, bool)
    for token, i in self.vocab.items():
      self._continues[i] = token.startswith("##")

  @staticmethod
  def _is_punctuation(char) -> bool:
    import unicodedata  # pylint: disable=import-outside-toplevel

    cp = ord(char)
    return (
      33 <= cp <= 47
      or 58 <= cp <= 64
      or 91 <= cp <= 96
      or 123 <= cp <= 126
      or unicodedata.category(char).startswith("P")
    )

  def _words(self, text: str):
    import unicodedata  # pylint: disable=import-outside-toplevel

    out = []
    for char in text:
      cp = ord(char)
      if (
        cp == 0
        or cp == 0xFFFD
        or (unicodedata.category(char).startswith("C") and char not in "\t\n\r")
      ):
        continue
      if char.isspace():
        out.append(" ")
      elif (
        0x4E00 <= cp <= 0x9FFF
        or 0x3400 <= cp <= 0x4DBF
        or 0xF900 <= cp <= 0xFAFF
        or 0x20000 <= cp <= 0x2FA1F
      ):
        out.append(f" {char} ")
      else:
        out.append(char)
    text = unicodedata.normalize("NFD", "".join(out).lower())
    text = "".join(c for c in text if unicodedata.category(c) != "Mn")
    words = []
    for word in text.split():
      current = ""
      for char in word:
        if self._is_punctuation(char):
          if current:
            words.append(current)
          words.append(char)
          current = ""
        else:
          current += char
      if current:
        words.append(current)
    return words

  def _pieces(self, word: str) -> list:
    if len(word) > 100:
      return [self.unk_id]
    pieces, start = [], 0
    while start < len(word):
      end = len(word)
      while end > start:
        piece = word[start:end] if start == 0 else "##" + word[start:end]
        if piece in self.vocab:
          pieces.append(self.vocab[piece])
          break
        end -= 1
      if end == start:
        return [self.unk_id]
      start = end
    return pieces

  def tokens(self, text: str) -> list:
    return [i for word in self._words(text) for i in self._pieces(word)]

  def encode(self, text: str, max_len: int) -> np.ndarray:
    return self._frame(np.asarray(self.tokens(text), np.int32), max_len)

  def decode(self, ids) -> str:
    text = ""
    for i in np.asarray(ids):
      if int(i) == self.eos_id:
        break
      if int(i) in (self.pad_id, self.bos_id):
        continue
      token = self.inverse.get(int(i), "[UNK]")
      text += token[2:] if token.startswith("##") else " " + token
    return text.strip()

  def word_starts(self, ids) -> np.ndarray:
    return ~self._continues[np.asarray(ids)]


TOKENIZERS = ("bytes", "sentencepiece", "siglip", "clip_bpe", "wordpiece")
# OpenAI CLIP's BPE merges, shipped with the package (vocab/README.md: source, license, checksum): what
# `clip_bpe` reads when no path is given.
CLIP_BPE_VOCAB = os.path.join(os.path.dirname(__file__), "vocab", "bpe_simple_vocab_16e6.txt.gz")


def check_tokenizer_name(name: str):
  if name not in TOKENIZERS:
    raise ConfigError(f"unknown tokenizer {name!r}; known tokenizers: {', '.join(TOKENIZERS)}")


def get_tokenizer(name: str, path: str = "", dataset_tokenizer: str | None = None):
  """name 'bytes'; 'sentencepiece' with a model path (empty: the dataset's own model); 'clip_bpe' with a
  vocabulary path (empty: CLIP's, shipped with vlm_jax); 'siglip' or 'wordpiece' with the path of the
  imported model's vocabulary."""
  check_tokenizer_name(name)
  if name == "bytes":
    return ByteTokenizer()
  if name == "clip_bpe":
    return ClipBpeTokenizer(path or CLIP_BPE_VOCAB)
  if name in ("siglip", "wordpiece"):
    if not path:
      raise ConfigError(
        f"data.tokenizer {name!r} needs data.tokenizer_path (the model's vocabulary file)"
      )
    return {
      "siglip": SiglipTokenizer,
      "wordpiece": WordPieceTokenizer,
    }[name](path)
  path = path or dataset_tokenizer
  if not path:
    raise ConfigError(
      "data.tokenizer is 'sentencepiece' but data.tokenizer_path is empty and the dataset ships "
      "no tokenizer model; set data.tokenizer_path"
    )
  return SentencePieceTokenizer(path)
