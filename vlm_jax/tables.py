r"""Ablation tables and plots from runs' eval records.

  python -m vlm_jax.tables runs/sweeps/objectives_tiny --metrics zero_shot/shape_top1,vqa/accuracy \
      --format md --out results/objectives_tiny.md [--plots results/plots]
  python -m vlm_jax.tables runs/clip_b16 runs/siglip_b16 --suite standard --format csv

RUNS are run workdirs, or folders of them. Each run contributes its latest record per (dataset, task)
(written by the evaluations during training, `main --mode=eval` and `python -m vlm_jax.evaluate`). Runs whose configs
differ only by `seed` form one row, shown as mean ± std (sample std) with n. The columns are the config
keys that vary across rows (a sweep's axes when every run has a sweep.json) and the chosen metrics; the
best value per metric column is marked (higher is better, except for losses and wall times).
Plots: training loss and the chosen metrics against step, one line per row (mean over its seeds).
A metric's name alone picks it where one of a run's datasets has it; `dataset:metric` (e.g.
imagenet:zero_shot/label_top1) where several do.

--suite standard: the standard benchmarks' records (`python -m vlm_jax.evaluate --suite standard`) in
CLIP_benchmark's long format: one row per run, dataset and task at its latest step, with acc1 / acc5 /
mean_per_class_recall, i2t_r1..t2i_r10, bleu4 / cider / rouge_l and vqa_acc where the task has them.
"""

import argparse
import csv
import io
import json
import math
import sys

import numpy as np

from vlm_jax import storage
from vlm_jax.errors import ConfigError
from vlm_jax.eval import harness, suite
from vlm_jax.flag_spelling import normalise_argv

IGNORED_KEYS = ("seed",)


def find_runs(paths) -> list:
  """Workdirs among `paths` and their sub-folders (a workdir has a config.json)."""
  runs = []
  for path in paths:
    path = storage.resolve(path)
    if storage.exists(storage.join(path, "config.json")):
      runs.append(path)
    elif storage.isdir(path):
      runs += find_runs(
        [
          storage.join(path, d)
          for d in storage.listdir(path)
          if storage.isdir(storage.join(path, d))
        ]
      )
  return runs


def load_run(workdir: str) -> dict:
  """{'name', 'config' (flattened), 'metrics' (latest step per dataset/task), 'axes' (from sweep.json)}."""
  config = harness.flatten(storage.read_json(storage.join(workdir, "config.json")))
  metrics, examples = {}, {}
  for record in latest_records(workdir):
    limited = record.get("limit") and record["task"].endswith(f"_first{record['limit']}")
    for name, value in record["metrics"].items():
      if (
        limited
      ):  # zero_shot_first5/label_top1: a limited record's metrics never stand for the full ones
        name = f"{record['task']}/{name.split('/', 1)[-1]}"
      metrics[f"{record['dataset']}:{name}"] = value
      examples[f"{record['dataset']}:{name}"] = record.get("num_examples")
  # A metric name alone where one dataset has it (a run's own eval data); two datasets' zero_shot
  # (ImageNet's and CIFAR's) are told apart by their dataset:metric names only.
  datasets = {}
  for key in metrics:
    datasets.setdefault(key.split(":", 1)[1], []).append(key)
  metrics.update({name: metrics[keys[0]] for name, keys in datasets.items() if len(keys) == 1})
  examples.update({name: examples[keys[0]] for name, keys in datasets.items() if len(keys) == 1})
  sweep_json = storage.join(workdir, "sweep.json")
  axes = storage.read_json(sweep_json).get("axes") if storage.exists(sweep_json) else None
  return {
    "name": storage.basename(workdir),
    "workdir": workdir,
    "config": config,
    "metrics": metrics,
    "examples": examples,  # metric -> the number of examples its record was computed on
    "axes": axes,
  }


def latest_records(workdir: str) -> list:
  """The run's latest record per (dataset, task)."""
  latest = {}
  for record in harness.read_records(workdir):
    key = (record["dataset"], record["task"])
    if key not in latest or record["step"] >= latest[key]["step"]:
      latest[key] = record
  return [latest[k] for k in sorted(latest)]


# The benchmark table's columns (CLIP_benchmark's long format): column -> the metric of each task.
BENCHMARK_COLUMNS = {
  "acc1": ("zero_shot/label_top1", "linear_probe/label_full_top1"),
  "acc5": ("zero_shot/label_top5",),
  "mean_per_class_recall": ("zero_shot/label_mean_per_class_recall",),
  **{f"{d}_r{k}": (f"retrieval/{d}_r{k}",) for d in ("i2t", "t2i") for k in (1, 5, 10)},
  "bleu4": ("captioning/bleu4",),
  "cider": ("captioning/cider",),
  "rouge_l": ("captioning/rouge_l",),
  "vqa_acc": ("vqa/accuracy",),
}


def benchmark_table(workdirs: list) -> dict:
  """One row per (run, dataset, task) of the standard benchmarks (`python -m vlm_jax.evaluate --suite
  standard`), its latest step, in the columns of BENCHMARK_COLUMNS (blank where a task has none)."""
  datasets = {t["data"] for t in suite.TASKS.values()}
  rows = []
  for workdir in workdirs:
    for record in latest_records(workdir):
      if record["dataset"] not in datasets:
        continue
      m = record["metrics"]
      values = {
        column: next((m[name] for name in names if name in m), None)
        for column, names in BENCHMARK_COLUMNS.items()
      }
      rows.append(
        {
          "run": storage.basename(workdir),
          "step": record["step"],
          "dataset": record["dataset"],
          "task": record["task"],
          "examples": record.get("num_examples"),
          **values,
        }
      )
  used = [c for c in BENCHMARK_COLUMNS if any(r[c] is not None for r in rows)]
  return {"columns": ["run", "step", "dataset", "task", "examples"] + used, "rows": rows}


def render_benchmarks(table: dict, fmt: str) -> str:
  cell = lambda v: "" if v is None else (f"{v:.4f}" if isinstance(v, float) else str(v))
  header, rows = table["columns"], [[cell(r[c]) for c in table["columns"]] for r in table["rows"]]
  if fmt == "csv":
    out = io.StringIO()
    csv.writer(out).writerows([header] + rows)
    return out.getvalue()
  return _grid(header, rows, fmt, left=4)


def _key(value):
  return json.dumps(value, sort_keys=True, default=str)


def group_runs(runs: list) -> list:
  """Runs grouped by their config minus the ignored keys; groups keep the order of first appearance."""
  groups = {}
  for run in runs:
    key = _key({k: v for k, v in run["config"].items() if k not in IGNORED_KEYS})
    groups.setdefault(key, []).append(run)
  return list(groups.values())


def varying_keys(runs: list) -> list:
  """Config keys whose values differ across runs (ignoring seed): a sweep's axes when every run names them."""
  if runs and all(r["axes"] for r in runs):
    keys = []
    for r in runs:
      keys += [k for k in r["axes"] if k not in keys and k not in IGNORED_KEYS]
    return keys
  all_keys = sorted({k for r in runs for k in r["config"]})
  return [
    k
    for k in all_keys
    if k not in IGNORED_KEYS and len({_key(r["config"].get(k)) for r in runs}) > 1
  ]


def summarize(values) -> tuple:
  """(mean, sample std or nan for n < 2, n) of the finite values."""
  values = [float(v) for v in values if v is not None and math.isfinite(float(v))]
  if not values:
    return math.nan, math.nan, 0
  return (
    float(np.mean(values)),
    float(np.std(values, ddof=1)) if len(values) > 1 else math.nan,
    len(values),
  )


def lower_is_better(metric: str) -> bool:
  return "loss" in metric or "wall" in metric


def build_table(runs: list, metrics: list) -> dict:
  """{'keys': varying keys, 'metrics', 'rows': [{'values': {key: value}, 'stats': {metric: (mean, std, n)},
  'runs': [names]}], 'best': {metric: row index}}."""
  groups = group_runs(runs)
  keys = varying_keys(runs)
  rows = []
  for group in groups:
    first = group[0]
    values = {k: (first["axes"] or {}).get(k, first["config"].get(k)) for k in keys}
    stats = {m: summarize([r["metrics"].get(m) for r in group]) for m in metrics}
    counts = {
      m: sorted({r.get("examples", {}).get(m) for r in group if m in r["metrics"]} - {None})
      for m in metrics
    }
    rows.append(
      {"values": values, "stats": stats, "examples": counts, "runs": [r["name"] for r in group]}
    )
  best = {}
  for m in metrics:
    means = [
      (row["stats"][m][0], i) for i, row in enumerate(rows) if not math.isnan(row["stats"][m][0])
    ]
    if means:
      best[m] = (min(means) if lower_is_better(m) else max(means))[1]
  return {"keys": keys, "metrics": list(metrics), "rows": rows, "best": best}


def _cell(stats, digits: int = 3) -> str:
  mean, std, n = stats
  if n == 0:
    return "-"
  text = f"{mean:.{digits}f}"
  return text + (f" ± {std:.{digits}f} (n={n})" if n > 1 else " (n=1)")


def _value(v) -> str:
  return "-" if v is None else (", ".join(map(str, v)) if isinstance(v, list) else str(v))


def render(table: dict, fmt: str) -> str:
  keys, metrics, rows, best = table["keys"], table["metrics"], table["rows"], table["best"]
  if fmt == "csv":
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(keys + [f"{m}{s}" for m in metrics for s in ("_mean", "_std", "_n", "_best")])
    for i, row in enumerate(rows):
      cells = [_value(row["values"][k]) for k in keys]
      for m in metrics:
        mean, std, n = row["stats"][m]
        cells += [
          f"{mean:.6g}" if n else "",
          f"{std:.6g}" if n > 1 else "",
          n,
          int(best.get(m) == i),
        ]
      writer.writerow(cells)
    return out.getvalue()
  # Where a metric's values were computed on different numbers of examples, each cell says on how many.
  mixed = {
    m for m in metrics if len({n for row in rows for n in row.get("examples", {}).get(m, [])}) > 1
  }
  counted = lambda row, m, text: (
    f"{text} [{'/'.join(map(str, row['examples'][m]))} examples]"
    if m in mixed and row["examples"][m]
    else text
  )
  mark = {"md": lambda s: f"**{s}**", "latex": lambda s: f"\\textbf{{{s}}}"}[fmt]
  header = keys + metrics
  body = []
  for i, row in enumerate(rows):
    cells = [_value(row["values"][k]) for k in keys]
    cells += [
      counted(row, m, mark(_cell(row["stats"][m])) if best.get(m) == i else _cell(row["stats"][m]))
      for m in metrics
    ]
    body.append(cells)
  return _grid(header, body, fmt, left=len(keys))


def _grid(header: list, body: list, fmt: str, left: int) -> str:
  """A markdown or LaTeX table of strings; the first `left` columns left-aligned (LaTeX)."""
  if fmt == "md":
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(c) + " |" for c in body]) + "\n"
  esc = lambda s: s.replace("_", "\\_").replace("±", "$\\pm$").replace("%", "\\%")
  lines = [
    "\\begin{tabular}{" + "l" * left + "r" * (len(header) - left) + "}",
    "\\toprule",
    " & ".join(esc(h) for h in header) + " \\\\",
    "\\midrule",
  ]
  lines += [" & ".join(esc(c) for c in cells) + " \\\\" for cells in body]
  return "\n".join(lines + ["\\bottomrule", "\\end{tabular}"]) + "\n"


def _history(workdir: str, metric: str):
  """(steps, values) of `metric` from metrics.jsonl ('train/...' or an eval metric) and eval records."""
  points = {}
  path = storage.join(workdir, "metrics.jsonl")
  if storage.exists(path):
    for line in storage.read_text(path).splitlines():
      record = json.loads(line)
      for name in (metric, f"eval/{metric}"):
        if name in record:
          points[record["step"]] = record[name]
  for record in harness.read_records(workdir):
    if metric in record["metrics"]:
      points[record["step"]] = record["metrics"][metric]
  steps = sorted(points)
  return np.array(steps), np.array([points[s] for s in steps], float)


def plot(table: dict, runs: list, metrics: list, folder: str) -> list:
  """One PNG per metric (and the training loss): each row's mean curve over its seeds, runs faint."""
  import matplotlib  # pylint: disable=import-outside-toplevel

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel

  by_name = {r["name"]: r for r in runs}
  written = []
  for metric in ["train/loss"] + list(metrics):
    fig, ax = plt.subplots(figsize=(6, 4))
    drawn = False
    for row in table["rows"]:
      label = (
        ", ".join(f"{k.split('.')[-1]}={_value(v)}" for k, v in row["values"].items())
        or row["runs"][0]
      )
      label = label if len(label) <= 60 else label[:57] + "..."
      curves = [_history(by_name[n]["workdir"], metric) for n in row["runs"]]
      curves = [(s, v) for s, v in curves if len(s)]
      if not curves:
        continue
      common = sorted(set.intersection(*(set(s.tolist()) for s, _ in curves)))
      mean = [np.mean([v[list(s).index(step)] for s, v in curves]) for step in common]
      (line,) = ax.plot(common, mean, marker="o" if len(common) < 10 else None, label=label)
      for s, v in curves if len(curves) > 1 else ():
        ax.plot(s, v, alpha=0.25, linewidth=0.8, color=line.get_color())
      drawn = True
    if drawn:
      ax.set_xlabel("step")
      ax.set_ylabel(metric)
      ax.legend(fontsize=7)
      path = storage.join(folder, metric.replace("/", "_") + ".png")
      fig.tight_layout()
      png = io.BytesIO()
      fig.savefig(png, format="png", dpi=100)
      storage.write_bytes(path, png.getvalue())
      written.append(path)
    plt.close(fig)
  return written


def main(argv=None):
  parser = argparse.ArgumentParser(
    description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
  )
  parser.add_argument("runs", nargs="+", help="run workdirs, or folders holding them")
  parser.add_argument(
    "--metrics",
    default="",
    help="comma-separated metric names, e.g. zero_shot/shape_top1 (or imagenet:zero_shot/label_top1 "
    "where runs have records of several datasets)",
  )
  parser.add_argument(
    "--suite",
    default="",
    help="standard: the benchmark suite's results, one row per run, dataset and task",
  )
  parser.add_argument("--format", choices=("md", "csv", "latex"), default="md")
  parser.add_argument("--out", default="", help="output file (default: stdout)")
  parser.add_argument("--plots", default="", help="folder for PNG plots (default: none)")
  args = parser.parse_args(normalise_argv(argv))
  try:
    runs = [load_run(w) for w in find_runs(args.runs)]
  except ConfigError as e:
    sys.exit(f"error: {e}")
  if not runs:
    sys.exit(f"error: no run workdirs (folders with config.json) under {', '.join(args.runs)}")
  if args.suite:
    if args.suite != "standard":
      sys.exit(f"error: unknown suite {args.suite!r}; known: standard")
    table = benchmark_table([r["workdir"] for r in runs])
    if not table["rows"]:
      sys.exit(
        "error: no benchmark records in these runs; write them with python -m vlm_jax.evaluate "
        "--workdir RUN --suite standard --data_dir DIR"
      )
    _emit(render_benchmarks(table, args.format), args.out)
    return
  if not args.metrics:
    sys.exit("error: give --metrics (comma-separated metric names) or --suite standard")
  metrics = [m.strip() for m in args.metrics.split(",") if m.strip()]
  known = {m for r in runs for m in r["metrics"]}
  unknown = [m for m in metrics if m not in known]
  if unknown:
    sys.exit(f"error: no run has metric(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
  table = build_table(runs, metrics)
  _emit(render(table, args.format), args.out)
  if args.plots:
    for path in plot(table, runs, metrics, args.plots):
      print(f"wrote {path}", file=sys.stderr)


def _emit(text: str, out: str):
  if out:
    storage.write_text(out, text)
  else:
    sys.stdout.write(text)


if __name__ == "__main__":
  main()
