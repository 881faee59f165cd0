"""Caption and VQA metrics, following the COCO caption evaluation (pycocoevalcap) and the VQA evaluation.

Captions: `caption_scores(candidates, references)` -> BLEU-1..4, ROUGE-L and CIDEr-D over a corpus, with
the definitions of pycocoevalcap 1.2:
- BLEU: corpus-level clipped n-gram precisions, "closest" reference length for the brevity penalty, and
  pycocoevalcap's 1e-15 / 1e-9 guards (a zero count gives a tiny, not an undefined, score);
- ROUGE-L: per candidate the F-measure (beta = 1.2) of the best LCS precision and the best LCS recall over
  its references, averaged;
- CIDEr-D: TF-IDF n-gram (1..4) vectors with document frequencies over the evaluated references,
  candidate weights clipped at the reference's, a Gaussian length penalty (sigma = 6), x10, averaged.
Text is lower-cased and split into words with punctuation dropped (what the PTB tokenizer of
coco-caption does for plain captions; it needs Java, this does not).

VQA: `vqa_normalize` applies the official answer normalisation (punctuation, number words to digits,
articles dropped, common contractions restored) and `vqa_accuracy` scores an answer against the human
answers: exact match for one, else the VQAv2 rule min(#matching humans / 3, 1) averaged over the
leave-one-out subsets of the humans.
"""

import collections
import math
import re

# --- captions ------------------------------------------------------------------------------------------

_WORD = re.compile(r"[a-z0-9]+(?:'[a-z]+)?")


def tokenize(text: str) -> list:
  """Lower-cased words without punctuation ("A dog's toy, red." -> ["a", "dog's", "toy", "red"])."""
  return _WORD.findall(text.lower())


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
  return sum(scores) / len(scores)


def cider_d(candidates, references, n: int = 4, sigma: float = 6.0) -> float:
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
  return sum(scores) / len(scores)


def caption_scores(candidates, references) -> dict:
  """candidates: [str]; references: [[str]] (one list per candidate, at least one each)."""
  if len(candidates) != len(references) or not candidates:
    raise ValueError(
      f"{len(candidates)} candidates for {len(references)} reference lists; need as many, >= 1"
    )
  if any(not refs for refs in references):
    raise ValueError("every candidate needs at least one reference caption")
  cands = [tokenize(c) for c in candidates]
  refs = [[tokenize(r) for r in rs] for rs in references]
  out = {f"bleu{k + 1}": s for k, s in enumerate(bleu(cands, refs))}
  out.update(rouge_l=rouge_l(cands, refs), cider=cider_d(cands, refs))
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
