"""A user's error at the command line: one line naming the value and what is allowed, exit 2.

Every absl CLI runs through `run(main)` instead of `absl.app.run(main)` (argparse scripts
use `ArgumentParser`):
- a flag or `--config.` override that does not parse,
- an `InputError` (raised by checks, or by `checking()` from a ValueError it wraps),
- an `absl.app.UsageError`,
each print `PROG: error: MESSAGE` on stderr and exit with code 2, no traceback and no help
text. Anything else is an internal error and keeps its traceback. Here, at the bottom of the
dependency graph, so the data tools and sora_jax's CLIs share it.
"""
from __future__ import annotations

import argparse
import ast
import contextlib
import os
import sys
from typing import Callable, Iterator, NoReturn, Sequence

from absl import app
from absl import flags
from etils import epath


class InputError(ValueError):
  """A bad input the user can fix; its message names the value and what is allowed."""


@contextlib.contextmanager
def checking() -> Iterator[None]:
  """Turns a ValueError raised by the input checks inside into an `InputError`."""
  try:
    yield
  except InputError:
    raise
  except ValueError as e:
    raise InputError(str(e)) from e


def check_directory(flag: str, value: str, writable: bool = True) -> None:
  """`value` is a directory, or one can be made there (and written, if `writable`).

  Raises ValueError naming `flag` for a file in the way or an ancestor that is not a
  writable directory, so the run stops before anything is computed. A URL (gs://...) is
  only checked for a file in the way: object stores have no directories or permission bits
  to look at.
  """
  if "://" in value:
    url = epath.Path(value)
    if url.exists() and not url.is_dir():
      raise ValueError(f"{flag}={value!r} is a file; expected a directory.")
    return
  path = os.path.abspath(value)
  if os.path.exists(path) and not os.path.isdir(path):
    raise ValueError(f"{flag}={value!r} is a file; expected a directory.")
  existing = path
  while not os.path.exists(existing):
    existing = os.path.dirname(existing)
  if not os.path.isdir(existing):
    raise ValueError(f"{flag}={value!r}: {existing!r} is a file, so no directory can be "
                     "made there.")
  if (writable or existing != path) and not os.access(existing, os.W_OK | os.X_OK):
    raise ValueError(f"{flag}={value!r}: {existing!r} is not writable.")


def fail(message: str) -> NoReturn:
  """Prints the one-line error and exits with code 2."""
  spec = getattr(sys.modules.get("__main__"), "__spec__", None)  # set by `python -m`
  prog = spec.name if spec else os.path.basename(sys.argv[0] if sys.argv else "") or "error"
  message = str(message)
  if "Traceback (most recent call last):" in message:  # a config file's error, as text
    head, _, trace = message.partition("Traceback (most recent call last):")
    message = f"{head} {trace.strip().splitlines()[-1]}"
  with contextlib.suppress(ValueError, SyntaxError):  # a message quoted twice over
    for _ in range(2):
      if message[:1] in "'\"" and message[-1:] == message[:1]:
        message = str(ast.literal_eval(message))
  line = " ".join(part.strip() for part in message.splitlines() if part.strip())
  print(f"{prog}: error: {line or 'bad input'}", file=sys.stderr, flush=True)
  sys.exit(2)


class ArgumentParser(argparse.ArgumentParser):
  """argparse for the scripts without absl: a bad argument is one line too (no usage)."""

  def error(self, message: str) -> NoReturn:
    fail(message)


def _parse_flags(argv: Sequence[str]) -> list[str]:
  try:
    return flags.FLAGS(argv)
  except Exception as e:  # pylint: disable=broad-except  # flags.Error, --config.KEY=...
    # A KeyError's str() is its repr; its message is its argument.
    fail(e.args[0] if isinstance(e, KeyError) and e.args else str(e))


def run(main: Callable[[list[str]], None]) -> None:
  """`absl.app.run(main)` with user errors as one line and exit code 2."""

  def wrapped(argv):
    try:
      return main(argv)
    except (InputError, app.UsageError) as e:
      fail(str(e))

  app.run(wrapped, flags_parser=_parse_flags)
