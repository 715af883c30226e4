"""The prompt policy: sampling refuses a prompt the policy rejects, in one line, before any
model loads (`sample` and `evaluate` check every prompt they were given).

A policy is a function prompt -> None (allowed) or the reason it is refused. `--policy`:
  default       a word list (`DEFAULT_WORDS`): a short starting list of phrases for content
                no deployment should generate; replace it with your own;
  PATH          your word list: one word or phrase a line, '#' starts a comment;
  module:func   a classifier, any importable function prompt -> None or reason;
  none          no policy.
Word lists match whole words, case-insensitively, with runs of whitespace and punctuation
between the words of a phrase treated alike ("Child  Abuse" and "child-abuse" match
"child abuse").
"""
from __future__ import annotations

import importlib
import re
from collections.abc import Callable, Iterable, Sequence

from etils import epath

Policy = Callable[[str], "str | None"]
DEFAULT = "default"
OFF = "none"
# A starting list, deliberately short: content that video generators' usage policies forbid
# everywhere (sexual content involving minors, non-consensual intimate imagery, gore).
DEFAULT_WORDS = ("child sexual abuse", "csam", "child pornography", "sexualized minor",
                 "non-consensual intimate", "revenge porn", "beheading", "snuff film")


def word_policy(words: Iterable[str], source: str = "the default word list") -> Policy:
  """A policy refusing prompts that contain any of `words` (whole words, any case)."""
  phrases = [w.strip().lower() for w in words if w.strip()]
  if not phrases:
    raise ValueError(f"{source} holds no words.")
  pattern = re.compile(r"\b(" + "|".join(
      r"\W+".join(map(re.escape, p.split())) for p in phrases) + r")\b", re.IGNORECASE)

  def check(prompt: str) -> str | None:
    found = pattern.search(prompt)
    return None if found is None else f"it contains {found.group(0)!r} ({source})"

  return check


def load(spec: str) -> Policy | None:
  """The policy a `--policy` value names (see the module docstring); None for "none".

  Raises:
    ValueError: a missing file, an empty list, or a module:function that does not import.
  """
  if spec == OFF:
    return None
  if spec == DEFAULT:
    return word_policy(DEFAULT_WORDS)
  path = epath.Path(spec)
  if path.exists():
    lines = [line.split("#", 1)[0] for line in path.read_text().splitlines()]
    return word_policy(lines, f"the word list {spec}")
  module, sep, name = spec.partition(":")
  if not sep:
    raise ValueError(f"--policy={spec!r}: no such file; expected {DEFAULT!r}, {OFF!r}, a "
                     "word-list file or module:function.")
  try:
    fn = getattr(importlib.import_module(module), name)
  except (ImportError, AttributeError) as e:
    raise ValueError(f"--policy={spec!r}: cannot load the classifier ({e}).") from None
  if not callable(fn):
    raise ValueError(f"--policy={spec!r}: {name} is not a function.")
  return fn


def check(prompts: Sequence[str], policy: Policy | None) -> None:
  """Raises ValueError naming the first prompt `policy` refuses, and why."""
  if policy is None:
    return
  for i, prompt in enumerate(prompts):
    reason = policy(prompt)
    if reason:
      shown = prompt if len(prompt) <= 60 else prompt[:57] + "..."
      raise ValueError(f"Prompt {i + 1} ({shown!r}) is refused by the prompt policy: "
                       f"{reason}. (--policy: {DEFAULT!r}, a word list, module:function "
                       f"or {OFF!r})")
