"""tfds builder for Shapes World: ArrayRecord files of generated clips, no TensorFlow.

Each record follows `data_pipelines/features.py` (uint8 `video`, `caption`,
`short_caption`) plus `index` (the generator index) and `level`. A config names a level
and a list of sizes `(T, H, W)`; clip `i` of a split has size `sizes[i % len(sizes)]`, so
a mixed-size config interleaves images and videos of several sizes in one split.

  b = ShapesWorld(config="full_64x64x17", data_dir="data/tfds")
  b.download_and_prepare()
  src = b.as_data_source("train")        # src[i]["video"]: uint8 [17, 64, 64, 3]

Custom sizes and counts: `make_config(level, sizes, num_examples)`.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence

import numpy as np
import tensorflow_datasets as tfds

from data_pipelines import features
from data_pipelines.shapes_world import generator
from data_pipelines.shapes_world import world as W

DEFAULT_NUM_EXAMPLES = {"train": 4096, "validation": 256, "test": 256, "compositional": 256}
# The variable-size mixture of the contract: square, landscape and portrait videos, images.
MIX_SIZES = ((17, 64, 64), (17, 48, 80), (17, 80, 48), (1, 64, 64))


@dataclasses.dataclass(kw_only=True)
class ShapesWorldConfig(tfds.core.BuilderConfig):
  level: str = "full"
  sizes: tuple[tuple[int, int, int], ...] = ((17, 64, 64),)
  num_examples: Mapping[str, int] = dataclasses.field(
      default_factory=lambda: dict(DEFAULT_NUM_EXAMPLES))


def size_name(sizes: Sequence[Sequence[int]]) -> str:
  return "_".join(f"{h}x{w}x{t}" for t, h, w in sizes)


def make_config(level: str = "full", sizes: Sequence[Sequence[int]] = ((17, 64, 64),),
                num_examples: Mapping[str, int] | None = None,
                name: str | None = None) -> ShapesWorldConfig:
  """A builder config; validates every value before any generation.

  Args:
    level: "basic" or "full".
    sizes: clip sizes (T, H, W); clip i of a split has size sizes[i % len(sizes)].
    num_examples: clips per split, e.g. {"train": 256, "validation": 32}; splits not
      named are not built. Defaults to DEFAULT_NUM_EXAMPLES.
    name: config name; by default `{level}_{HxWxT...}` plus the counts when not default.
  """
  if level not in W.LEVELS:
    raise ValueError(f"level={level!r} is not a Shapes World level; allowed: {W.LEVELS}.")
  sizes = tuple(tuple(int(v) for v in s) for s in sizes)
  if not sizes:
    raise ValueError("sizes is empty; give at least one (T, H, W).")
  for t, h, w in sizes:
    features.check_clip_size(t, h, w, where="Shapes World sizes", max_side=generator.MAX_SIDE)
  counts = dict(num_examples if num_examples is not None else DEFAULT_NUM_EXAMPLES)
  for split, n in counts.items():
    if split not in W.SPLITS:
      raise ValueError(f"num_examples names split {split!r}; allowed: {W.SPLITS}.")
    if int(n) < 1:
      raise ValueError(f"num_examples[{split!r}]={n} must be >= 1.")
  if name is None:
    name = f"{level}_{size_name(sizes)}"
    if counts != DEFAULT_NUM_EXAMPLES:
      name += "".join(f"_{s}{counts[s]}" for s in W.SPLITS if s in counts)
  return ShapesWorldConfig(name=name, level=level, sizes=sizes, num_examples=counts,
                           description=f"Shapes World, level {level}, sizes {sizes}.")


BUILDER_CONFIGS = [
    make_config("basic", ((17, 64, 64),), name="basic_64x64x17"),
    make_config("full", ((17, 64, 64),), name="full_64x64x17"),
    make_config("basic", ((1, 64, 64),), name="basic_64x64x1"),
    make_config("full", ((1, 64, 64),), name="full_64x64x1"),
    make_config("full", MIX_SIZES, name="full_mix"),
    make_config("basic", MIX_SIZES, name="basic_mix"),
]


class ShapesWorld(tfds.core.GeneratorBasedBuilder):
  """Shapes World clips (see shared/shapes_world.md)."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "First release."}
  BUILDER_CONFIGS = BUILDER_CONFIGS
  DEFAULT_CONFIG_NAME = "full_64x64x17"

  def __init__(self, *, file_format: str = "array_record", **kwargs):
    super().__init__(file_format=file_format, **kwargs)

  def _info(self) -> tfds.core.DatasetInfo:
    feats = dict(features.clip_features())
    feats["index"] = np.int64
    feats["level"] = tfds.features.Text()
    return tfds.core.DatasetInfo(
        builder=self,
        description="Procedural text-to-video world: shapes, motions, pillar, camera pans.",
        features=tfds.features.FeaturesDict(feats),
        disable_shuffling=True,  # record i is clip i: sizes and indices stay known
        metadata=tfds.core.MetadataDict(),
    )

  def _split_generators(self, dl_manager):
    del dl_manager  # nothing to download: the data is generated
    return {split: self._generate_examples(split, n)
            for split, n in self.builder_config.num_examples.items()}

  def _generate_examples(self, split: str, num: int):
    cfg = self.builder_config
    sizes = [cfg.sizes[i % len(cfg.sizes)] for i in range(num)]
    for i, (t, h, w) in enumerate(sizes):
      clip = generator.make_clip(split, i, t, h, w, cfg.level)
      yield f"{i:09d}", {"video": clip.video, "caption": clip.caption,
                         "short_caption": clip.short_caption, "index": i,
                         "level": cfg.level}
    features.record_sizes(self.info, split, sizes)


def build(config: str | ShapesWorldConfig, data_dir: str) -> ShapesWorld:
  """Builds (or reuses) a Shapes World data set; returns the prepared builder."""
  b = ShapesWorld(config=config, data_dir=data_dir)
  b.download_and_prepare()
  return b
