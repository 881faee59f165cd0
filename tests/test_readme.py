"""Every command in README.md and docs/*.md runs as typed: the docs' code blocks are this test's source, run in
document order from a fresh working directory (a user's checkout), one after another on the same workdirs.

A ```bash block is run line by line (backslash continuations joined) with bash; a ```python block is run
with python. A block right after `<!-- not run: REASON -->` is skipped and must say why. What the test
changes, and nothing else:
  * training commands (`python -m vlm_jax.main` without --mode) get `--config.train.max_steps=4` (the same
    run, cut after 4 steps on its own schedule), and `launch/sweep.py ... --backend local` gets
    `--only clip_b32-tiny__seed0 --set train.max_steps=4`; the speed tools time 2 steps or batches after 1
    of warm-up (`tools.bench --steps 2 --warmup 1`, `tools.input_bench --batches 2 --warmup 1`);
  * `gs://BUCKET` is bucket `bucket` of a GCS emulator on 127.0.0.1 (tests/gcs.py);
  * the HF model folders, the OpenAI checkpoint and the big_vision .npz the convert commands read are
    small random models (tests/hf_models.py), made where the commands look for them.
A block is a user's sequence, so its commands run one after another; blocks run two at a time (LANES), and a
block waits for the blocks that made the paths it names (`runs/clip_tiny` for LiT, the LLaVA stages, the
evaluation page and the exports): the order a reader meets them in, where it matters.
Run it with `python -m pytest -m ci` (in CI's second run, after the fast tier).
"""

import concurrent.futures
import dataclasses
import functools
import os
import re
import shlex
import subprocess
import sys
import time

import pytest

from tests import helpers

# In reading order, as a user goes through them: later pages use runs made by earlier ones.
READING_ORDER = [
  "getting-started.md",
  "recipes.md",
  "data.md",
  "evaluation.md",
  "scaling.md",
  "pretrained.md",
  "design.md",
  "contributing.md",
]
_PAGES = sorted(f for f in os.listdir(os.path.join(helpers.ROOT, "docs")) if f.endswith(".md"))
DOCS = ["README.md"] + [
  os.path.join("docs", f) for f in READING_ORDER + sorted(set(_PAGES) - set(READING_ORDER))
]
SHORT_TRAINING = ["--config.train.max_steps=4"]
SHORT_SWEEP = ["--only", "clip_b32-tiny__seed0", "--set", "train.max_steps=4"]
SHORT_TIMING = {  # the same measurement, over fewer steps (flags given last win)
  ("python", "-m", "vlm_jax.tools.bench"): ["--steps", "2", "--warmup", "1"],
  ("python", "-m", "vlm_jax.tools.input_bench"): ["--batches", "2", "--warmup", "1"],
}
CHECKOUT = ("experiments", "launch", "docs")  # what the commands read from the working directory
LANES = 2  # blocks run at once: this test's commands are about 19 minutes one at a time on 2 cores
# The paths blocks share: a bucket's, and those in the folders of the working directory that the commands
# (and _make_inputs) write; the checkout's folders are only read.
PATH = re.compile(r"(?:gs://\w+|\b(?:runs|data|exported|models))(?:/[\w.{}-]+)+")


@dataclasses.dataclass
class Block:
  doc: str
  line: int
  lang: str
  body: str
  skip: str | None


def code_blocks(doc: str) -> list:
  lines = open(os.path.join(helpers.ROOT, doc), encoding="utf-8").read().splitlines()
  blocks, i = [], 0
  while i < len(lines):
    fence = re.match(r"^```(\S*)", lines[i])
    if not fence:
      i += 1
      continue
    end = next(j for j in range(i + 1, len(lines)) if lines[j].startswith("```"))
    above = next((lines[k].strip() for k in range(i - 1, -1, -1) if lines[k].strip()), "")
    skip = re.fullmatch(r"<!-- not run: (.*) -->", above)
    blocks.append(
      Block(
        doc, i + 1, fence.group(1), "\n".join(lines[i + 1 : end]), skip and skip.group(1).strip()
      )
    )
    i = end + 1
  return blocks


def bash_commands(body: str) -> list:
  joined = re.sub(r"\\\n\s*", " ", body)
  return [
    line.strip()
    for line in joined.splitlines()
    if line.strip() and not line.strip().startswith("#")
  ]


def as_run(command: str) -> str:
  """The command with the test's documented changes (see the module docstring)."""
  command = command.replace("gs://BUCKET", "gs://bucket")
  words = shlex.split(command, comments=True)
  if words[:3] == ["python", "-m", "vlm_jax.main"] and not any(
    w.startswith("--mode") for w in words
  ):
    words += SHORT_TRAINING
  if words[:2] == ["python", "launch/sweep.py"] and "local" in words and "--dry-run" not in words:
    words += SHORT_SWEEP
  words += SHORT_TIMING.get(tuple(words[:3]), [])
  return shlex.join(words)


def _runnable():
  blocks = [b for doc in DOCS for b in code_blocks(doc)]
  for b in blocks:
    assert b.skip is None or b.skip, f"{b.doc}:{b.line}: a block that is not run must say why"
  return [b for b in blocks if b.lang in ("bash", "python") and b.skip is None]


def test_the_docs_have_runnable_blocks_and_every_skipped_one_says_why():
  runnable = _runnable()
  assert any(
    "vlm_jax.main --config experiments/clip_b32.py:tiny --workdir runs/clip_tiny" in b.body
    for b in runnable
  )
  assert all(bash_commands(b.body) for b in runnable if b.lang == "bash")


def _make_inputs(cwd):
  """What the convert commands read: small random models in the formats users convert from."""
  import torch  # pylint: disable=import-outside-toplevel

  from tests import hf_models  # pylint: disable=import-outside-toplevel

  clip = hf_models.make_hf_clip(cwd / "models" / "clip-vit-base-patch32")
  siglip = hf_models.make_hf_siglip(cwd / "models" / "siglip-base-patch16-224")
  from tests.test_convert import big_vision_npz  # pylint: disable=import-outside-toplevel

  big_vision_npz(siglip, cwd / "webli_en_b16_224.npz")
  torch.save({"state_dict": hf_models.openai_state_dict(clip)}, cwd / "ViT-B-32.pt")
  hf_models.make_hf_vilt(cwd / "models" / "vilt-b32-mlm")
  hf_models.make_hf_flava(cwd / "models" / "flava-full")


def dependencies(blocks: list) -> list:
  """For each block, the blocks that made the paths it names: for each path, the first block that names it
  or a path above or below it. Later blocks read what earlier ones made (a run, shards, a converted model)
  and add their own files beside it (evaluation records, exports); none rewrites it, so they need not wait
  for each other."""
  named = [set(PATH.findall(b.body)) for b in blocks]

  def related(a, b):  # the same path, or one inside the other
    return a == b or a.startswith(b + "/") or b.startswith(a + "/")

  return [
    {next(j for j in range(i + 1) if any(related(p, q) for q in named[j])) for p in named[i]} - {i}
    for i in range(len(blocks))
  ]


def schedule_order(blocks: list, deps: list) -> list:
  """Block indices, those with the longest chain of commands still to run after them first (the critical
  path: a lane that starts a short block while a long chain waits makes the test as long as the chain)."""
  dependents = [[j for j in range(len(blocks)) if i in deps[j]] for i in range(len(blocks))]

  @functools.cache
  def chain(i):
    return len(_commands(blocks[i])) + max((chain(j) for j in dependents[i]), default=0)

  return sorted(range(len(blocks)), key=lambda i: (-chain(i), i))


def _commands(block: Block) -> list:
  return bash_commands(block.body) if block.lang == "bash" else [block.body]


def _run_block(block: Block, env: dict, cwd) -> str | None:
  """Runs a block's commands in order; the first failure's report, or None. Prints each command's wall
  (`pytest -s` shows them)."""
  for command in _commands(block):
    start = time.time()
    argv = (
      ["bash", "-eo", "pipefail", "-c", as_run(command)]
      if block.lang == "bash"
      else [sys.executable, "-c", command]
    )
    result = subprocess.run(argv, env=env, cwd=cwd, capture_output=True, text=True, timeout=1200)
    print(f"{block.doc}:{block.line}: {time.time() - start:.0f} s: {command[:80]}", flush=True)
    if result.returncode != 0:
      return (
        f"{block.doc}:{block.line}: {argv[-1]}\n--- stdout\n{result.stdout[-3000:]}"
        f"\n--- stderr\n{result.stderr[-5000:]}"
      )
  return None


def test_blocks_wait_for_the_blocks_that_made_their_paths():
  """The split that lets blocks run at once keeps what a reader relies on: LiT, the LLaVA stages, the
  evaluation page and the exports come after the runs they use, and blocks that only use what they make
  themselves (FLAVA with its codebook, the convert commands) or only read the checkout wait for nothing."""
  blocks = _runnable()
  deps = dependencies(blocks)

  def where(text):
    return next(i for i, b in enumerate(blocks) if text in b.body)

  clip, prefixlm = where("--workdir runs/clip_tiny "), where("--workdir runs/prefixlm_tiny ")
  assert deps[where("lit_b16.py:tiny")] == {clip}
  assert deps[where("evaluate --workdir runs/clip_tiny")] == {clip, prefixlm}
  assert deps[where('vlm_jax.load("runs/clip_tiny")')] == {
    clip,
    where("--workdir runs/coca_tiny"),
    prefixlm,
    where("--output runs/flava_full"),
  }
  assert deps[where("--to hf_clip")] == {clip}
  assert deps[where("--to hf_flava")] == {where("--output runs/flava_full")}
  for alone in ("--output runs/codebook.npy", "--from hf_clip", "--mode=compile"):
    assert not deps[where(alone)], alone
  # The runs that others wait on start first.
  assert schedule_order(blocks, deps)[0] == clip


@pytest.mark.ci
def test_every_command_in_the_docs_runs_as_typed(tmp_path, gcs):
  for name in CHECKOUT:
    os.symlink(os.path.join(helpers.ROOT, name), tmp_path / name)
  _make_inputs(tmp_path)
  env = {
    **helpers.subprocess_env(1),
    **gcs,
    "PATH": os.path.dirname(sys.executable) + os.pathsep + os.environ["PATH"],
  }
  blocks = _runnable()
  deps = dependencies(blocks)
  waiting, running, done, failures = schedule_order(blocks, deps), {}, set(), []
  with concurrent.futures.ThreadPoolExecutor(LANES) as lanes:
    while running or (waiting and not failures):  # after a failure, the running blocks finish
      if not failures:
        for i in [i for i in waiting if deps[i] <= done][: LANES - len(running)]:
          waiting.remove(i)
          running[lanes.submit(_run_block, blocks[i], env, tmp_path)] = i
      finished, _ = concurrent.futures.wait(running, return_when=concurrent.futures.FIRST_COMPLETED)
      for future in finished:
        i = running.pop(future)
        if future.result() is None:
          done.add(i)
        else:
          failures.append(future.result())
  assert not failures, "\n\n".join(failures)
  assert done == set(range(len(blocks)))


def _sketches():
  blocks = [b for doc in DOCS for b in code_blocks(doc)]
  return [b for b in blocks if b.skip is not None and b.lang in ("python", "bash")]


@pytest.mark.parametrize("block", _sketches(), ids=lambda b: f"{b.doc}:{b.line}")
def test_every_sketch_compiles_and_names_what_exists(block):
  """A block that is not run is still checked: Python compiles, its imports import, and every attribute
  it reads from an imported name exists (a sketch calling a missing class fails); a shell block's
  `python -m` modules exist."""
  import ast  # pylint: disable=import-outside-toplevel
  import importlib.util  # pylint: disable=import-outside-toplevel

  where = f"{block.doc}:{block.line}"
  if block.lang == "bash":
    for command in bash_commands(block.body):
      for module in re.findall(r"python3? -m ([\w.]+)", command):
        if module.startswith("vlm_jax"):
          assert importlib.util.find_spec(module) is not None, f"{where}: no module {module}"
    return
  tree = ast.parse(block.body, filename=where)
  namespace = {}
  for node in ast.walk(tree):
    if isinstance(node, (ast.Import, ast.ImportFrom)):
      exec(compile(ast.Module([node], []), where, "exec"), namespace)  # pylint: disable=exec-used
  for node in ast.walk(tree):
    chain = []
    while isinstance(node, ast.Attribute):
      chain.append(node.attr)
      node = node.value
    if isinstance(node, ast.Name) and node.id in namespace and chain:
      value = namespace[node.id]
      for attr in reversed(chain):
        assert hasattr(value, attr), (
          f"{where}: {node.id}.{'.'.join(reversed(chain))} does not exist"
        )
        value = getattr(value, attr)
