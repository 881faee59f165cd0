"""CLIP BPE and SigLIP SentencePiece tokenizers against transformers' implementations of the same files."""

import collections
import gzip
import json
import os

import numpy as np
import pytest

from vlm_jax.data import tokenizers

transformers = pytest.importorskip("transformers")

SENTENCES = [
  "a photo of a cat.",
  "A large RED circle in the top-left corner!",
  "There's 2 dogs & 3 cats; aren't they cute?",
  "  multiple   spaces\tand tabs ",
  "Ünïcödé façade, naïve café",
  "numbers 12345 and 3.14159",
  "hyphen-ated words, e.g. state-of-the-art",
  "&amp; html entities &lt;b&gt;",
  "",
  "emoji 🙂 ok",
]
CORPUS = [
  f"a photo of a {c} {s} in the {p}"
  for c in ("red", "blue", "green", "large")
  for s in ("circle", "square", "cat", "dog")
  for p in ("top", "left", "center corner")
] + SENTENCES


def train_clip_merges(texts, num_merges):
  """A tiny BPE in CLIP's format (byte-level symbols, '</w>' ends a word), learned by counting pairs."""
  clip = tokenizers.ClipBpeTokenizer.__new__(tokenizers.ClipBpeTokenizer)
  byte_encoder = tokenizers._bytes_to_unicode()
  import regex

  words = collections.Counter()
  for text in texts:
    for piece in regex.findall(
      r"'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+", text.lower()
    ):
      chars = [byte_encoder[b] for b in piece.encode("utf-8")]
      words[tuple(chars[:-1] + [chars[-1] + "</w>"])] += 1
  del clip
  merges = []
  for _ in range(num_merges):
    pairs = collections.Counter()
    for word, count in words.items():
      for pair in zip(word, word[1:]):
        pairs[pair] += count
    if not pairs:
      break
    best = max(pairs, key=lambda p: (pairs[p], p))
    merges.append(best)
    new_words = collections.Counter()
    for word, count in words.items():
      out, i = [], 0
      while i < len(word):
        if i < len(word) - 1 and (word[i], word[i + 1]) == best:
          out.append(word[i] + word[i + 1])
          i += 2
        else:
          out.append(word[i])
          i += 1
      new_words[tuple(out)] += count
    words = new_words
  return merges


def write_clip_vocab(directory, num_merges=120):
  """Writes bpe_simple_vocab.txt.gz (OpenAI's format) and the HF CLIP files (vocab.json, merges.txt)."""
  merges = train_clip_merges(CORPUS, num_merges)
  lines = ["#version: 0.2"] + [" ".join(m) for m in merges]
  gz = os.path.join(directory, "bpe_simple_vocab.txt.gz")
  with gzip.open(gz, "wt", encoding="utf-8") as f:
    f.write("\n".join(lines) + "\n")
  with open(os.path.join(directory, "merges.txt"), "w", encoding="utf-8") as f:
    f.write("\n".join(lines) + "\n")
  tok = tokenizers.ClipBpeTokenizer(gz)
  with open(os.path.join(directory, "vocab.json"), "w", encoding="utf-8") as f:
    json.dump(tok.encoder, f)
  return gz, tok


def test_clip_bpe_matches_transformers(tmp_path):
  gz, ours = write_clip_vocab(str(tmp_path))
  theirs = transformers.CLIPTokenizer.from_pretrained(
    str(tmp_path)
  )  # reads vocab.json + merges.txt
  for text in SENTENCES:
    if "&amp;" in text:
      continue  # OpenAI's tokenizer unescapes HTML entities, transformers' does not (checked below)
    expected = theirs(text)["input_ids"]
    ids = ours.encode(text, 77)
    assert list(ids[: len(expected)]) == expected, text
    assert not ids[len(expected) :].any()
  # A folder with merges.txt + vocab.json (the HF layout) gives the same ids as the .gz file.
  folder = tokenizers.ClipBpeTokenizer(str(tmp_path))
  np.testing.assert_array_equal(
    folder.encode_batch(SENTENCES, 16), ours.encode_batch(SENTENCES, 16)
  )
  # Truncation keeps the end-of-text token, as open_clip.tokenize does.
  long = ours.encode("a photo of a red circle " * 10, 8)
  assert long[0] == ours.bos_id and long[-1] == ours.eos_id
  assert ours.decode(ours.encode("a photo of a red cat", 16)) == "a photo of a red cat"
  assert ours.tokens("&amp; &lt;b&gt;") == ours.tokens("& <b>")


def _open_clip_tokenizer_module():
  """open_clip's tokenizer.py, loaded by path: open_clip's __init__ needs torchvision, which has no CPU build
  here, so the package is installed with --no-deps and only this module is imported."""
  import importlib.util

  spec = importlib.util.find_spec("open_clip")
  if spec is None or not spec.submodule_search_locations:
    pytest.skip("open_clip_torch is not installed (pip install --no-deps open_clip_torch)")
  folder = list(spec.submodule_search_locations)[0]
  module_spec = importlib.util.spec_from_file_location(
    "open_clip_tokenizer", os.path.join(folder, "tokenizer.py")
  )
  module = importlib.util.module_from_spec(module_spec)
  module_spec.loader.exec_module(module)
  return module, os.path.join(folder, "bpe_simple_vocab_16e6.txt.gz")


def test_clip_bpe_matches_open_clip_on_the_real_vocabulary():
  open_clip_tokenizer, vocab = _open_clip_tokenizer_module()
  ours = tokenizers.ClipBpeTokenizer(vocab)
  assert ours.vocab_size == 49408
  expected = open_clip_tokenizer.SimpleTokenizer(vocab)(
    SENTENCES + CORPUS[:8], context_length=77
  ).numpy()
  np.testing.assert_array_equal(ours.encode_batch(SENTENCES + CORPUS[:8], 77), expected)


def train_siglip_spm(path, vocab_size=300):
  import sentencepiece

  sentencepiece.SentencePieceTrainer.train(
    sentence_iterator=iter([tokenizers.SiglipTokenizer.canonicalize(t) for t in CORPUS * 3]),
    model_prefix=path,
    vocab_size=vocab_size,
    model_type="unigram",
    pad_id=0,
    eos_id=1,
    unk_id=2,
    bos_id=-1,
    minloglevel=2,
    character_coverage=1.0,
    byte_fallback=True,
  )
  return path + ".model"


def test_siglip_sentencepiece_matches_transformers(tmp_path):
  path = train_siglip_spm(str(tmp_path / "spiece"))
  ours = tokenizers.SiglipTokenizer(path)
  theirs = transformers.SiglipTokenizer(vocab_file=path)
  for text in SENTENCES:
    expected = theirs(text, padding="max_length", max_length=16, truncation=True)["input_ids"]
    assert list(ours.encode(text, 16)) == expected, text
  assert ours.decode(ours.encode("A red circle!", 16)) == "a red circle"


def write_wordpiece_vocab(directory):
  """A small uncased BERT vocabulary: specials, single characters (and their ## forms), whole words."""
  tok = tokenizers.WordPieceTokenizer.__new__(tokenizers.WordPieceTokenizer)
  words = sorted({w for t in CORPUS for w in tok._words(t)})
  chars = sorted({c for w in words for c in w})
  vocab = (
    ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    + chars
    + ["##" + c for c in chars]
    + words[::2]
    + ["##le"]
  )
  path = os.path.join(directory, "vocab.txt")
  with open(path, "w", encoding="utf-8") as f:
    f.write("\n".join(dict.fromkeys(vocab)) + "\n")
  return path


def test_wordpiece_matches_transformers(tmp_path):
  path = write_wordpiece_vocab(str(tmp_path))
  ours = tokenizers.WordPieceTokenizer(path)
  theirs = transformers.BertTokenizer.from_pretrained(str(tmp_path), do_lower_case=True)
  for text in SENTENCES + CORPUS[:5] + ["Circles, squares & triangles!!", "unseen-wörds zzz"]:
    expected = theirs(text, padding="max_length", max_length=24, truncation=True)["input_ids"]
    assert list(ours.encode(text, 24)) == expected, text
  ids = ours.encode("a photo of a circle", 16)
  starts = ours.word_starts(ids)
  assert [ours.inverse[int(i)] for i, s in zip(ids, starts) if not s] == [
    t for t in (ours.inverse[int(i)] for i in ids) if t.startswith("##")
  ]


TRICKY_CAPTIONS = [
  "A dog's   ball &amp; a CAT!!",
  "Café crème, naïve résumé — 3½ cups",
  "emoji 🐶🐱 and 日本語のテキスト",
  "it's   don't they'll we've I'M",
  "<html>tags</html> &lt;b&gt; x&#39;s",
  "a " + "very " * 100 + "long caption",
  "",
  "!!! ??? 1234567890 3.14",
]


def test_the_shipped_clip_vocabulary_is_openais_and_tokenizes_as_open_clip():
  """No path: clip_bpe reads the vocabulary shipped in the package (source and checksum in
  vlm_jax/data/vocab/README.md), and tokenizes as open_clip's SimpleTokenizer with its own copy."""
  import hashlib  # pylint: disable=import-outside-toplevel

  with open(tokenizers.CLIP_BPE_VOCAB, "rb") as f:
    digest = hashlib.sha256(f.read()).hexdigest()
  readme = os.path.join(os.path.dirname(tokenizers.CLIP_BPE_VOCAB), "README.md")
  assert digest in open(readme).read()
  open_clip_tokenizer, vocab = _open_clip_tokenizer_module()
  ours = tokenizers.get_tokenizer("clip_bpe")
  expected = open_clip_tokenizer.SimpleTokenizer(vocab)(TRICKY_CAPTIONS, context_length=77).numpy()
  np.testing.assert_array_equal(ours.encode_batch(TRICKY_CAPTIONS, 77), expected)
