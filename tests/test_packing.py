"""NaViT packing: contents of packed sequences, grain path == numpy path, efficiency."""
import json

import grain
import numpy as np
import pytest

from data_pipelines import packing
from data_pipelines import patches

PATCH = (1, 2, 2)
TEXT_LEN = 6
# (T', h, w): videos and images (T' = 1), different aspect ratios; tokens = T' h w / 4.
SIZES = [(5, 4, 4), (1, 4, 4), (3, 8, 4), (1, 8, 8), (1, 2, 2), (2, 4, 2), (3, 4, 6)]


def _examples(seed=0):
  rng = np.random.default_rng(seed)
  examples, latents = [], []
  for i, (t, h, w) in enumerate(SIZES):
    lat = rng.normal(size=(t, h, w, 3)).astype(np.float32)
    ids = np.zeros(TEXT_LEN, np.int32)
    ids[:i % TEXT_LEN] = rng.integers(2, 50, i % TEXT_LEN)  # clip 0 has an empty caption
    examples.append(packing.clip_example(lat, ids, ids > 0, PATCH, clip_index=i))
    latents.append(lat)
  return examples, latents


def test_packed_contents_round_trip():
  examples, latents = _examples()
  packed = list(packing.pack_examples(examples, seq_len=32, max_clips=3, num_bins=2))
  seen = set()
  for p in packed:
    assert p["tokens"].shape == (32, 12) and p["positions"].shape == (32, 3)
    assert p["text_ids"].shape == p["text_mask"].shape == (3, TEXT_LEN)
    seg = p["segment_ids"]
    assert np.all(p["clip_index"][seg == 0] == -1) and np.all(p["loss_weight"][seg == 0] == 0)
    assert np.all(p["tokens"][seg == 0] == 0)
    for s in range(1, seg.max() + 1):
      rows = seg == s
      idx = int(p["clip_index"][rows][0])
      assert np.all(p["clip_index"][rows] == idx) and idx not in seen
      seen.add(idx)
      np.testing.assert_allclose(p["loss_weight"][rows].sum(), 1.0, rtol=1e-6)
      np.testing.assert_array_equal(
          patches.unpatchify(p["tokens"][rows], latents[idx].shape, PATCH), latents[idx])
      np.testing.assert_array_equal(p["positions"][rows], patches.patchify(latents[idx], PATCH)[1])
      # Segment s owns caption row s - 1.
      np.testing.assert_array_equal(p["text_ids"][s - 1], examples[idx]["text_ids"])
      np.testing.assert_array_equal(p["text_mask"][s - 1], examples[idx]["text_mask"])
    assert not p["text_mask"][seg.max():].any()  # unused caption rows are empty
  assert seen == set(range(len(SIZES)))


def test_grain_first_fit_matches_numpy():
  examples, _ = _examples()
  for num_bins in (1, 2):
    expected = list(packing.pack_examples(examples, 32, 3, num_bins))
    ds = grain.MapDataset.source(examples).to_iter_dataset()
    got = list(packing.pack_dataset(ds, 32, 3, num_bins))
    assert len(got) == len(expected)
    for g, e in zip(got, expected):
      assert set(g) == set(e)
      for k in e:
        assert g[k].dtype == e[k].dtype and g[k].shape == e[k].shape, k
        np.testing.assert_array_equal(g[k], e[k], err_msg=k)


def test_max_clips_and_efficiency():
  examples, _ = _examples()
  packed = list(packing.pack_examples(examples, seq_len=64, max_clips=2, num_bins=1))
  assert all(p["segment_ids"].max() <= 2 for p in packed)
  tokens = sum(e["tokens"].shape[0] for e in examples)
  eff = packing.packing_efficiency(np.stack([p["segment_ids"] for p in packed]))
  np.testing.assert_allclose(eff, tokens / (64 * len(packed)))
  # 87 tokens into 32-token rows: first fit needs 4 rows (the bound is 3), so 87 / 128,
  # against 87 / 224 for one clip a row padded to 32.
  dense = list(packing.pack_examples(examples, seq_len=32, max_clips=4, num_bins=4))
  eff4 = packing.packing_efficiency(np.stack([p["segment_ids"] for p in dense]))
  assert tokens == 87 and len(dense) == 4
  np.testing.assert_allclose(eff4, 87 / 128)


def test_clip_longer_than_sequence_is_an_error():
  examples, _ = _examples()
  with pytest.raises(ValueError, match="20 tokens .* seq_len=16"):
    list(packing.pack_examples(examples, seq_len=16, max_clips=2))


@pytest.mark.parametrize("num_bins", [1, 2])
def test_pack_dataset_resumes_from_any_position(num_bins):
  """Stopped after any number of packed rows, its JSON state restored into a fresh
  iterator gives the rows the uninterrupted iterator gives, mid-round included."""
  examples = _examples()[0] * 3
  ds = packing.pack_dataset(grain.MapDataset.source(examples).to_iter_dataset(), 32, 3,
                            num_bins)
  expected = list(ds)
  assert len(expected) > 4
  for k in range(len(expected) + 1):
    it = iter(ds)
    for _ in range(k):
      next(it)
    state = json.loads(json.dumps(it.get_state()))
    restored = iter(ds)
    restored.set_state(state)
    rest = list(restored)
    assert len(rest) == len(expected) - k, k
    for g, e in zip(rest, expected[k:]):
      for key in e:
        np.testing.assert_array_equal(g[key], e[key], err_msg=f"{k}: {key}")
