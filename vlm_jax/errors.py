"""The project's error types, importable from anywhere without importing anything else of the project."""


class ConfigError(ValueError):
  """A config (or command line, or input) that cannot run. The message is one line naming the problem and
  the fix; entry points print it as `error: ...` and exit 2, without a traceback."""


class StorageError(OSError):
  """Reading or writing data failed after retries; the message names the file. Entry points print it as
  `error: ...` and exit 1."""


class MissingDataError(ConfigError):
  """An evaluation dataset that is not where it was looked for; the message names the paths searched and
  how to obtain it."""
