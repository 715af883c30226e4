"""Named size presets: one table beside each model, resolved into its config dataclass."""
from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any, TypeVar

C = TypeVar("C")


def resolve(cls: type[C], table: Mapping[str, Mapping[str, Any]], variant: str,
            overrides: Mapping[str, Any], what: str) -> C:
  """`cls(variant=variant, **table[variant], **overrides)`, with clear errors.

  Args:
    cls: the config dataclass (has a `variant` field).
    table: variant name -> field values.
    variant: the preset's name.
    overrides: fields to set on top of the preset.
    what: the model's name for error messages ("DiT", "VAE", ...).

  Raises:
    ValueError: an unknown variant, or an override that is not a field of `cls`.
  """
  if variant not in table:
    raise ValueError(f"Unknown {what} variant {variant!r}; known variants: {list(table)}.")
  fields = {f.name for f in dataclasses.fields(cls)}
  unknown = sorted(set(overrides) - fields)
  if unknown:
    raise ValueError(f"Unknown {cls.__name__} field(s) {unknown}; known fields: "
                     f"{sorted(fields)}.")
  return cls(variant=variant, **{**table[variant], **overrides})
