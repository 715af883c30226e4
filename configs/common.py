"""Helpers shared by the config files: argument parsing and clip-size parsing.

Config files follow big_vision: `get_config(arg)` where `arg` is the text after the colon
in `--config configs/vae.py:variant=tiny,runlocal=True`. `parse_arg` turns it into a
ConfigDict with the types of the declared defaults, and rejects unknown keys by listing
the known ones, so a typo in a sweep never silently runs the default.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence

import ml_collections

from data_pipelines import features

_TRUE = ("1", "true", "yes", "y", "on")
_FALSE = ("0", "false", "no", "n", "off")


def _convert(key: str, text: str, default):
  """Converts `text` to the type of `default`."""
  try:
    if isinstance(default, bool):
      low = text.lower()
      if low in _TRUE:
        return True
      if low in _FALSE:
        return False
      raise ValueError
    if isinstance(default, int):
      return int(text)
    if isinstance(default, float):
      return float(text)
  except ValueError:
    raise ValueError(
        f"Config argument {key}={text!r} is not a valid {type(default).__name__} "
        f"(default {default!r}).") from None
  return text


def _coerce(key: str, value, default):
  """A value given in Python (a recipe's dict) checked against the type of `default`."""
  if isinstance(value, str):
    return _convert(key, value, default)
  numeric = isinstance(value, (int, float)) and not isinstance(value, bool)
  if isinstance(default, bool) and isinstance(value, bool):
    return value
  if isinstance(default, float) and not isinstance(default, bool) and numeric:
    return float(value)
  if (isinstance(default, int) and not isinstance(default, bool) and numeric
      and float(value).is_integer()):
    return int(value)
  raise ValueError(f"Config argument {key}={value!r} is not a valid "
                   f"{type(default).__name__} (default {default!r}).")


def parse_arg(arg: str | Mapping | None, **defaults) -> ml_collections.ConfigDict:
  """Parses "key=value,key2=value2" (or a mapping of the same keys) against typed defaults.

  Args:
    arg: the config argument string (may be None or empty), or a mapping of arguments (a
      recipe composing another config file's arguments in Python).
    **defaults: every allowed key with its default value; the default's type is the type
      of the key. A bare `key` (no `=`) sets a bool key to True.

  Returns:
    A locked ConfigDict of all keys.

  Raises:
    ValueError: for an unknown key (listing the known ones) or an unconvertible value.
  """
  out = dict(defaults)
  if isinstance(arg, Mapping):
    items = [(key, True, value) for key, value in arg.items()]
  else:
    items = [item.partition("=") for item in filter(None, (arg or "").split(","))]
  for key, eq, value in items:
    key = key.strip()
    if key not in defaults:
      raise ValueError(f"Unknown config argument {key!r} in {arg!r}; known: "
                       f"{', '.join(sorted(defaults))}.")
    if not eq:
      if not isinstance(defaults[key], bool):
        raise ValueError(f"Config argument {key!r} needs a value ({key}=...).")
      out[key] = True
    elif isinstance(value, str) and not isinstance(arg, Mapping):
      out[key] = _convert(key, value.strip(), defaults[key])
    else:
      out[key] = _coerce(key, value, defaults[key])
  cfg = ml_collections.ConfigDict(out)
  cfg.lock()
  return cfg


def parse_sizes(text: str, where: str = "sizes",
                max_side: int | None = None) -> tuple[tuple[int, int, int], ...]:
  """Parses "17x64x64+1x64x64" (T x H x W, '+'-separated) into validated (T, H, W) tuples."""
  sizes = []
  for part in filter(None, text.split("+")):
    try:
      t, h, w = (int(v) for v in part.lower().split("x"))
    except ValueError:
      raise ValueError(f"{where}: {part!r} is not TxHxW (for example 17x64x64).") from None
    features.check_clip_size(t, h, w, where=where, max_side=max_side)
    sizes.append((t, h, w))
  if not sizes:
    raise ValueError(f"{where}: no size in {text!r}; expected e.g. 17x64x64+1x64x64.")
  return tuple(sizes)


# `config.train` keys every training config carries for looking inside a run:
# profile_start  trace steps profile_start .. + profile_steps - 1 with jax.profiler into
#                WORKDIR/profile (0 = off; sora_jax/train/profiler.py);
# wandb          a Weights & Biases project to log metrics to as well ('' = off).
OBSERVE = {"profile_start": 0, "profile_steps": 3, "wandb": ""}


def add_mesh(config: ml_collections.ConfigDict, rules: str) -> None:
  """The `mesh` and `sharding` sections every training config carries.

  `mesh`: total size of each axis (one may be -1: the rest); `dcn`: how many slices (or
  hosts) an axis spans (sora_jax/sharding/mesh.py). Placement: `sharding.rules`
  (sora_jax/sharding/rules.py).
  """
  config.mesh = {"data": -1, "fsdp": 1, "context": 1, "tensor": 1,
                 "dcn": {"data": 1, "fsdp": 1, "context": 1, "tensor": 1}}
  config.sharding = {"rules": rules}


def shapes_world_data(level: str, sizes: Sequence[Sequence[int]], num_train: int,
                      num_eval: int, data_dir: str) -> ml_collections.ConfigDict:
  """The `data` section for a Shapes World source (see data_pipelines.pipeline)."""
  return ml_collections.ConfigDict({
      "source": "shapes_world",
      "name": {"level": level, "sizes": [list(s) for s in sizes],
               "num_examples": {"train": num_train, "validation": num_eval,
                                "test": num_eval, "compositional": num_eval}},
      "data_dir": data_dir,
      "prepare": True,  # build the data set on first use
      "crop": None,
      "num_workers": 0,
      "prefetch": 2,
  })


def video_folder_data(folder: str, frames: int, sizes: Sequence[Sequence[int]],
                      data_dir: str, validation_fraction: float = 0.1
                      ) -> ml_collections.ConfigDict:
  """The `data` section for a folder of user videos + captions.jsonl.

  Args:
    folder: the video folder (see data_pipelines/video_folder).
    frames: T of every video clip (images become T = 1).
    sizes: (H, W) targets; each video goes to the one nearest its aspect ratio.
    data_dir: where the tfds data set is built / read.
    validation_fraction: files held out for the `validation` split (evaluation).
  """
  for h, w in sizes:
    features.check_clip_size(frames, h, w, where="video folder sizes")
  return ml_collections.ConfigDict({
      "source": "video_folder",
      "name": {"folder": folder, "frames": frames, "sizes": [list(s) for s in sizes],
               "validation_fraction": validation_fraction},
      "data_dir": data_dir,
      "prepare": True,
      "crop": None,
      "num_workers": 0,
      "prefetch": 2,
  })
