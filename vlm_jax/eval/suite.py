"""The standard benchmark suite: named tasks, each an evaluator on a standard dataset
(`vlm_jax.data.benchmarks`) with the conventions the papers use.

  python -m vlm_jax.evaluate --workdir RUN --suite standard --data_dir DIR
  python -m vlm_jax.evaluate --workdir RUN --tasks imagenet_zeroshot,coco_retrieval --data_dir DIR

ImageNet-1k and its variants (V2, Sketch; A and R among their 200 classes): zero-shot top-1/top-5
with CLIP's curated class names and its 80 prompt templates (`--templates openai_imagenet_7` or
`single` for the 7- and 1-template sets); CIFAR-10/100: zero-shot with CLIP's 18 CIFAR templates, and
a linear probe; COCO (Karpathy 5k test) and Flickr30k (1k test): retrieval R@1/5/10 with 5 captions
per image; COCO Karpathy test captioning (BLEU-4, CIDEr-D, ROUGE-L with COCO's tokenizer); VQAv2 val
accuracy over the 10 human answers.
"""

from vlm_jax.errors import ConfigError

TASKS = {
  "imagenet_zeroshot": dict(name="zero_shot", data="imagenet", templates="openai_imagenet"),
  "imagenet_v2_zeroshot": dict(name="zero_shot", data="imagenet_v2", templates="openai_imagenet"),
  "imagenet_sketch_zeroshot": dict(
    name="zero_shot", data="imagenet_sketch", templates="openai_imagenet"
  ),
  "imagenet_a_zeroshot": dict(name="zero_shot", data="imagenet_a", templates="openai_imagenet"),
  "imagenet_r_zeroshot": dict(name="zero_shot", data="imagenet_r", templates="openai_imagenet"),
  "cifar10_zeroshot": dict(name="zero_shot", data="cifar10", templates="cifar"),
  "cifar100_zeroshot": dict(name="zero_shot", data="cifar100", templates="cifar"),
  "cifar10_linear_probe": dict(name="linear_probe", data="cifar10"),
  "cifar100_linear_probe": dict(name="linear_probe", data="cifar100"),
  "imagenet_linear_probe": dict(name="linear_probe", data="imagenet", train_limit=50000),
  "coco_retrieval": dict(name="retrieval", data="coco_karpathy", captions_per_image=5),
  "flickr30k_retrieval": dict(name="retrieval", data="flickr30k_karpathy", captions_per_image=5),
  "coco_captioning": dict(name="captioning", data="coco_karpathy"),
  "vqav2": dict(name="vqa", data="vqav2", max_answer_len=8),
}

SUITES = {
  # Everything but the ImageNet linear probe (a 50k-image feature pass), for whatever data is present.
  "standard": tuple(t for t in TASKS if t != "imagenet_linear_probe"),
}


def task_config(task: str, data_dir: str, templates: str = "", limit: int = 0) -> dict:
  """The evaluator config of a suite task: its evaluator (`name`), its dataset under data_dir, and its
  settings; `limit` (images, 0 = all) overrides the task's, `templates` (a set of
  benchmark_names.TEMPLATES) the 80 OpenAI templates of the ImageNet tasks (CIFAR keeps its own)."""
  if not data_dir:
    raise ConfigError(
      f"task {task!r} reads a standard dataset: give --data_dir DIR (a TFDS data dir or the datasets' "
      "original files; docs/evaluation.md lists the layouts)"
    )
  spec = dict(TASKS[task])
  config = {**spec, "data": dict(name=spec["data"], data_dir=data_dir), "limit": limit}
  if templates and spec.get("templates") == "openai_imagenet":
    config["templates"] = templates
  return config


def record_task(config: dict) -> str:
  """The task name a suite task's records carry: its evaluator's, with a template set other than the
  task's own appended (7- and 80-template ImageNet results are different records), and `_first<N>` for
  an evaluation limited to N images."""
  name = config["name"]
  default = next(
    (
      t.get("templates")
      for t in TASKS.values()
      if t["data"] == config["data"]["name"] and t["name"] == name
    ),
    None,
  )
  if name == "zero_shot" and config.get("templates", default) != default:
    name = f"zero_shot_{config['templates']}"
  # A limited evaluation is another record: it never stands for the full one, nor the full for it.
  return f"{name}_first{config['limit']}" if config.get("limit") else name


def resolve(tasks=(), suite: str = "") -> list:
  """The task names asked for: a suite's tasks, plus the named ones (suite or run-data tasks)."""
  if suite and suite not in SUITES:
    raise ConfigError(f"unknown suite {suite!r}; known: {', '.join(SUITES)}")
  return list(dict.fromkeys(list(SUITES.get(suite, ())) + list(tasks)))
