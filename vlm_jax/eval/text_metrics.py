"""Caption and VQA metrics, following the COCO caption evaluation (pycocoevalcap) and the VQA evaluation.

Captions: `caption_scores(candidates, references)` -> BLEU-1..4, ROUGE-L and CIDEr-D over a corpus, with
the definitions of pycocoevalcap 1.2:
- BLEU: corpus-level clipped n-gram precisions, "closest" reference length for the brevity penalty, and
  pycocoevalcap's 1e-15 / 1e-9 guards (a zero count gives a tiny, not an undefined, score);
- ROUGE-L: per candidate the F-measure (beta = 1.2) of the best LCS precision and the best LCS recall over
  its references, averaged;
- CIDEr-D: TF-IDF n-gram (1..4) vectors with document frequencies over the evaluated references,
  candidate weights clipped at the reference's, a Gaussian length penalty (sigma = 6), x10, averaged.
Text is tokenized as pycocoevalcap's PTB tokenizer does (`tokenize`; it needs Java, this does not).

VQA: `vqa_normalize` applies the official answer normalisation (punctuation, number words to digits,
articles dropped, common contractions restored) and `vqa_accuracy` scores an answer against the human
answers: exact match for one, else the VQAv2 rule min(#matching humans / 3, 1) averaged over the
leave-one-out subsets of the humans.
"""

import collections
import math
import re

# --- captions ------------------------------------------------------------------------------------------

# The PTB tokenizer (Stanford CoreNLP 3.4.1, `-preserveLines -lowerCase`) that pycocoevalcap runs on every
# caption, then drops the tokens in its PUNCTUATIONS. Its rules that captions meet, without Java:
# hyphenated words and numbers stay whole ("double-decker", "3.5-inch", "1,000", "5:30"); clitics split
# off ("dog's" -> dog 's, "isn't" -> is n't, "can't" -> ca n't, "gonna" -> gon na); brackets become
# -lrb- / -rrb- / -lsb- / -rsb- / -lcb- / -rcb- (kept: pycocoevalcap's list names them in upper case);
# symbols ($ % & # @ * + = ~ /) are tokens of their own at a word's edge; abbreviations ("u.s.") keep
# their periods; quotes, dashes standing alone, ellipses and sentence punctuation are dropped.
_DROPPED = {"''", "'", "``", "`", ".", "?", "!", ",", ":", "-", "--", "...", ";", '"'}
_BRACKETS = {"(": "-lrb-", ")": "-rrb-", "[": "-lsb-", "]": "-rsb-", "{": "-lcb-", "}": "-rcb-"}
_EDGE = "([{<\"'`$#@~*+=/&%)]}>.,;:!?"
_CLITICS = ("n't", "'s", "'re", "'ve", "'ll", "'m", "'d")
_SPLIT_WORDS = {  # PTB splits these into two tokens
  "cannot": ("can", "not"),
  "gonna": ("gon", "na"),
  "wanna": ("wan", "na"),
  "gotta": ("got", "ta"),
  "gimme": ("gim", "me"),
  "lemme": ("lem", "me"),
}
_ABBREVIATION = re.compile(
  r"^(?:(?:[a-z]\.)+[a-z]?\.?|(?:mr|mrs|ms|dr|st|jr|sr|vs|etc|inc|co|ltd|ave|mt)\.)$"
)
_FRACTION = re.compile(
  r"(\d) (\d+/\d+)(?=\s|$)"
)  # "3 1/2": one PTB token, joined by a no-break space
_TAG = re.compile(r"^</?[a-z][^<>]*>$")  # SGML-like "<angle>" is one token


def _split_word(core: str) -> list:
  """PTB's treatment of a word with no edge punctuation left: clitics and fixed contractions."""
  if core in _SPLIT_WORDS:
    return list(_SPLIT_WORDS[core])
  if core.endswith("n't") and len(core) > 3:
    stem = core[:-3]
    return [{"ca": "ca", "wo": "wo", "sha": "sha"}.get(stem, stem), "n't"]
  for clitic in _CLITICS:
    if core.endswith(clitic) and len(core) > len(clitic):
      return _split_word(core[: -len(clitic)]) + [clitic]
  if "'n'" in core:  # rock'n'roll
    left, right = core.split("'n'", 1)
    return [w for w in (left, "'n'", right) if w]
  return [core]


def _ptb_tokens(chunk: str) -> list:
  """PTB tokens of one whitespace-separated chunk (lower-cased)."""
  if chunk in ("...", "--", "-") or _ABBREVIATION.match(chunk) or _TAG.match(chunk):
    return [chunk]
  lead, trail = [], []
  while chunk and chunk[0] in _EDGE:
    if chunk[0] == "#" and chunk[1:2].isalpha():  # a hashtag stays whole
      break
    if chunk.startswith("..."):
      lead.append("...")
      chunk = chunk[3:]
      continue
    lead.append(chunk[0])
    chunk = chunk[1:]
  while chunk and chunk[-1] in _EDGE:
    if _ABBREVIATION.match(chunk):
      break
    if chunk.endswith("..."):
      trail.insert(0, "...")
      chunk = chunk[:-3]
      continue
    run = len(chunk) - len(chunk.rstrip("!?"))
    if run > 1:  # "!!", "?!": one token
      trail.insert(0, chunk[-run:])
      chunk = chunk[:-run]
      continue
    trail.insert(0, chunk[-1])
    chunk = chunk[:-1]
  middle = []
  for i, piece in enumerate(chunk.split("--")):  # a double dash inside a chunk separates words
    if i:
      middle.append("--")
    if piece:
      middle += _split_word(piece)
  # A trailing "'" after an s is a possessive's apostrophe (kids' -> kids '), already split above.
  return [_BRACKETS.get(t, t) for t in lead + middle + trail]


def tokenize(text: str) -> list:
  """Caption words as pycocoevalcap scores them: PTB tokens, lower-cased, its punctuation dropped
  ("A double-decker bus isn't red." -> ["a", "double-decker", "bus", "is", "n't", "red"])."""
  text = _FRACTION.sub("\\1\xa0\\2", text.lower())
  chunks = [c for c in re.split(r"[ \t\n\r\f\v]+", text) if c]  # not str.split(): it splits "\xa0"
  words = []
  for chunk, after in zip(chunks, chunks[1:] + [""]):
    # "No." before a number is the abbreviation of "number", a period that ends a sentence otherwise.
    tokens = [chunk] if chunk == "no." and after[:1].isdigit() else _ptb_tokens(chunk)
    words += [t for t in tokens if t not in _DROPPED]
  return words


def _ngrams(words, n: int = 4) -> collections.Counter:
  return collections.Counter(
    tuple(words[i : i + k]) for k in range(1, n + 1) for i in range(len(words) - k + 1)
  )


def bleu(candidates, references, n: int = 4) -> list:
  """Corpus BLEU-1..n of tokenized candidates [words] against their references [[words]]."""
  tiny, small = 1e-15, 1e-9
  correct, guess = [0] * n, [0] * n
  test_len = ref_len = 0
  for cand, refs in zip(candidates, references):
    counts = _ngrams(cand, n)
    max_ref = collections.Counter()
    for ref in refs:
      for gram, c in _ngrams(ref, n).items():
        max_ref[gram] = max(max_ref[gram], c)
    for gram, c in counts.items():
      correct[len(gram) - 1] += min(c, max_ref[gram])
    for k in range(n):
      guess[k] += max(0, len(cand) - k)
    test_len += len(cand)
    ref_len += min((abs(len(r) - len(cand)), len(r)) for r in refs)[1]  # closest; ties: the shorter
  scores, product = [], 1.0
  for k in range(n):
    product *= (correct[k] + tiny) / (guess[k] + small)
    scores.append(product ** (1.0 / (k + 1)))
  ratio = (test_len + tiny) / (ref_len + small)
  if ratio < 1:
    scores = [s * math.exp(1 - 1 / ratio) for s in scores]
  return scores


def _lcs(a, b) -> int:
  row = [0] * (len(b) + 1)
  for x in a:
    prev_diag = 0
    for j, y in enumerate(b):
      prev_diag, row[j + 1] = row[j + 1], prev_diag + 1 if x == y else max(row[j + 1], row[j])
  return row[-1]


def rouge_l(candidates, references, beta: float = 1.2) -> float:
  return _mean(rouge_l_per_image(candidates, references, beta))


def _mean(scores) -> float:
  return sum(scores) / len(scores)


def rouge_l_per_image(candidates, references, beta: float = 1.2) -> list:
  scores = []
  for cand, refs in zip(candidates, references):
    lcs = [_lcs(r, cand) for r in refs]
    precision = max(l / len(cand) if cand else 0.0 for l in lcs)
    recall = max(l / len(r) if r else 0.0 for l, r in zip(lcs, refs))
    scores.append(
      (1 + beta**2) * precision * recall / (recall + beta**2 * precision)
      if precision and recall
      else 0.0
    )
  return scores


def cider_d(candidates, references, n: int = 4, sigma: float = 6.0) -> float:
  return _mean(cider_d_per_image(candidates, references, n, sigma))


def cider_d_per_image(candidates, references, n: int = 4, sigma: float = 6.0) -> list:
  """Per candidate; document frequencies are over all of `references` (the corpus)."""
  doc_freq = collections.Counter()
  for refs in references:
    doc_freq.update({gram for r in refs for gram in _ngrams(r, n)})
  log_docs = math.log(len(references))

  def vector(words):
    vec, norm = [{} for _ in range(n)], [0.0] * n
    for gram, tf in _ngrams(words, n).items():
      k = len(gram) - 1
      vec[k][gram] = tf * (log_docs - math.log(max(1.0, doc_freq[gram])))
      norm[k] += vec[k][gram] ** 2
    # pycocoevalcap measures length in bigrams; the length difference is the same in words.
    return vec, [math.sqrt(x) for x in norm], max(0, len(words) - 1)

  scores = []
  for cand, refs in zip(candidates, references):
    vec, norm, length = vector(cand)
    total = [0.0] * n
    for ref in refs:
      ref_vec, ref_norm, ref_length = vector(ref)
      penalty = math.exp(-((length - ref_length) ** 2) / (2 * sigma**2))
      for k in range(n):
        value = sum(
          min(w, ref_vec[k].get(g, 0.0)) * ref_vec[k].get(g, 0.0) for g, w in vec[k].items()
        )
        if norm[k] and ref_norm[k]:
          value /= norm[k] * ref_norm[k]
        total[k] += value * penalty
    scores.append(10.0 * sum(total) / n / len(refs))
  return scores


def caption_scores(candidates, references, per_image: bool = False) -> dict:
  """candidates: [str]; references: [[str]] (one list per candidate, at least one each). Corpus-level
  BLEU-1..4, ROUGE-L and CIDEr-D; per_image adds "per_image": {bleu4, rouge_l, cider} lists in the
  candidates' order (as pycocoevalcap's scorers return them; CIDEr-D's document frequencies stay the
  corpus')."""
  if len(candidates) != len(references) or not candidates:
    raise ValueError(
      f"{len(candidates)} candidates for {len(references)} reference lists; need as many, >= 1"
    )
  if any(not refs for refs in references):
    raise ValueError("every candidate needs at least one reference caption")
  # pycocoevalcap's ROUGE-L splits the tokenized text on " ", its BLEU and CIDEr-D with str.split(),
  # which also splits PTB's "3\xa01/2".
  cands = [tokenize(c) for c in candidates]
  refs = [[tokenize(r) for r in rs] for rs in references]
  split = lambda words: [w for word in words for w in word.split()]
  cands_split, refs_split = [split(c) for c in cands], [[split(r) for r in rs] for rs in refs]
  out = {f"bleu{k + 1}": s for k, s in enumerate(bleu(cands_split, refs_split))}
  rouge, cider = rouge_l_per_image(cands, refs), cider_d_per_image(cands_split, refs_split)
  out.update(rouge_l=_mean(rouge), cider=_mean(cider))
  if per_image:
    out["per_image"] = {
      "bleu4": [bleu([c], [r])[3] for c, r in zip(cands_split, refs_split)],
      "rouge_l": rouge,
      "cider": cider,
    }
  return out


# --- VQA -----------------------------------------------------------------------------------------------

_PUNCTUATION = (
  ";",
  "/",
  "[",
  "]",
  '"',
  "{",
  "}",
  "(",
  ")",
  "=",
  "+",
  "\\",
  "_",
  "-",
  ">",
  "<",
  "@",
  "`",
  ",",
  "?",
  "!",
)
_COMMA_IN_NUMBER = re.compile(r"(\d)(,)(\d)")
_PERIOD = re.compile(r"(?!<=\d)(\.)(?!\d)")
_NUMBERS = {
  "none": "0",
  "zero": "0",
  "one": "1",
  "two": "2",
  "three": "3",
  "four": "4",
  "five": "5",
  "six": "6",
  "seven": "7",
  "eight": "8",
  "nine": "9",
  "ten": "10",
}
_ARTICLES = ("a", "an", "the")
# The most frequent entries of the official contraction table (apostrophe-less spellings restored).
_CONTRACTIONS = {
  "aint": "ain't",
  "arent": "aren't",
  "cant": "can't",
  "couldnt": "couldn't",
  "couldve": "could've",
  "didnt": "didn't",
  "doesnt": "doesn't",
  "dont": "don't",
  "hadnt": "hadn't",
  "hasnt": "hasn't",
  "havent": "haven't",
  "hes": "he's",
  "im": "i'm",
  "ive": "i've",
  "isnt": "isn't",
  "itd": "it'd",
  "itll": "it'll",
  "lets": "let's",
  "shouldnt": "shouldn't",
  "shouldve": "should've",
  "thats": "that's",
  "theres": "there's",
  "theyre": "they're",
  "theyve": "they've",
  "wasnt": "wasn't",
  "werent": "weren't",
  "whats": "what's",
  "wheres": "where's",
  "whos": "who's",
  "wont": "won't",
  "wouldnt": "wouldn't",
  "wouldve": "would've",
  "youre": "you're",
  "youve": "you've",
  "yall": "y'all",
}


def vqa_normalize(answer: str) -> str:
  text = answer.replace("\n", " ").replace("\t", " ").strip()
  out = text
  for p in _PUNCTUATION:
    if (p + " " in text or " " + p in text) or _COMMA_IN_NUMBER.search(text):
      out = out.replace(p, "")
    else:
      out = out.replace(p, " ")
  out = _PERIOD.sub("", out)
  words = [_NUMBERS.get(w, w) for w in out.lower().split()]
  return " ".join(_CONTRACTIONS.get(w, w) for w in words if w not in _ARTICLES)


def vqa_accuracy(prediction: str, answers) -> float:
  """One answer: exact match after normalisation. Several (VQAv2's 10 humans): the mean over each human
  left out of min(#other humans who gave the prediction / 3, 1)."""
  answers = [answers] if isinstance(answers, str) else list(answers)
  if not answers:
    raise ValueError("vqa_accuracy needs at least one reference answer")
  pred = vqa_normalize(prediction)
  refs = [vqa_normalize(a) for a in answers]
  if len(refs) == 1:
    return float(pred == refs[0])
  scores = []
  for i in range(len(refs)):
    matching = sum(r == pred for j, r in enumerate(refs) if j != i)
    scores.append(min(1.0, matching / 3.0))
  return sum(scores) / len(scores)
