"""Both spellings of a flag: every entry point defines its flags with underscores and reads `--dry-run` as
`--dry_run`, so the dashed form users type is never a silently ignored stray argument."""

import sys


def normalise_flag(arg: str) -> str:
  """`--all-checkpoints` -> `--all_checkpoints` (flag names only; values and --config.* keys untouched)."""
  if not arg.startswith("--") or arg.startswith("--config.") or arg == "--":
    return arg
  name, sep, value = arg[2:].partition("=")
  return "--" + name.replace("-", "_") + sep + value


def normalise_argv(argv=None) -> list:
  """argv without the program name (argparse's convention), flags in their underscore spelling."""
  return [normalise_flag(a) for a in (sys.argv[1:] if argv is None else argv)]
