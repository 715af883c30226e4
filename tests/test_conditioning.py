"""Training task masks (sora_jax/diffusion/conditioning.py): what each kind gives, and bad input."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sora_jax.diffusion import conditioning


def _packed(frames_per_clip, tokens_per_frame=3, pad=2):
  """A packed row: clips of the given latent frame counts, then padding."""
  seg, fidx = [], []
  for s, t in enumerate(frames_per_clip, 1):
    for f in range(t):
      seg += [s] * tokens_per_frame
      fidx += [f] * tokens_per_frame
  seg += [0] * pad
  fidx += [0] * pad
  return jnp.asarray([fidx], jnp.int32), jnp.asarray([seg], jnp.int32)


@pytest.mark.parametrize("kind", conditioning.TRAIN_KINDS)
def test_each_kind_gives_the_frames_it_names(kind):
  fidx, seg = _packed([5, 1, 3, 5])
  f, s = np.asarray(fidx[0]), np.asarray(seg[0])
  for i in range(20):
    given = np.asarray(conditioning.random_condition_mask(jax.random.key(i), fidx, seg,
                                                   {kind: 1.0}))[0]
    assert not given[s == 0].any()  # padding is never given
    for clip in np.unique(s[s > 0]):
      g, fr = given[s == clip], f[s == clip]
      frames = fr.max() + 1
      per_frame = {int(x): bool(g[fr == x].all()) for x in np.unique(fr)}
      assert all(g[fr == x].all() or not g[fr == x].any() for x in np.unique(fr))
      kept = [x for x in range(frames) if per_frame[x]]
      if frames == 1 or kind == "t2v":
        assert kept == []
        continue
      assert len(kept) < frames  # something is always left to generate
      if kind == "i2v":
        assert kept == [0]
      elif kind == "extend_forward":
        assert kept == list(range(len(kept))) and kept
      elif kind == "extend_backward":
        assert kept == list(range(frames - len(kept), frames)) and kept
      else:  # interpolate: a prefix and a suffix, both non-empty when T' >= 3
        assert 0 in kept and (frames < 3 or frames - 1 in kept)


def test_mixture_draws_every_kind_in_proportion():
  fidx, seg = _packed([5] * 40, tokens_per_frame=1, pad=0)
  counts = {"none": 0, "first_only": 0}
  for i in range(10):
    given = np.asarray(conditioning.random_condition_mask(
        jax.random.key(i), fidx, seg, {"t2v": 0.5, "i2v": 0.5}))[0].reshape(40, 5)
    counts["none"] += int((~given.any(1)).sum())
    counts["first_only"] += int((given[:, 0] & ~given[:, 1:].any(1)).sum())
  assert counts["none"] + counts["first_only"] == 400
  assert 150 < counts["none"] < 250  # binomial(400, 0.5): 5 sigma is +-50


def test_condition_frames_by_task():
  np.testing.assert_array_equal(conditioning.condition_frames("i2v", 5), [1, 0, 0, 0, 0])
  np.testing.assert_array_equal(conditioning.condition_frames("extend", 5, given=2),
                                [1, 1, 0, 0, 0])
  np.testing.assert_array_equal(
      conditioning.condition_frames("extend", 5, given=2, direction="backward"), [0, 0, 0, 1, 1])
  np.testing.assert_array_equal(
      conditioning.condition_frames("interpolate", 5, given=1, given_end=1), [1, 0, 0, 0, 1])
  assert not conditioning.condition_frames("t2v", 5).any()


@pytest.mark.parametrize("call, match", [
    (lambda: conditioning.condition_frames("dance", 5), "Unknown task 'dance'"),
    (lambda: conditioning.condition_frames("extend", 5, direction="up"), "direction='up'"),
    (lambda: conditioning.condition_frames("extend", 2, given=2), "leave nothing to generate"),
    (lambda: conditioning.check_mixture({"t2x": 1.0}), r"unknown task kinds \['t2x'\]"),
    (lambda: conditioning.check_mixture({"t2v": 0.0}), "sum to > 0"),
])
def test_bad_task_input(call, match):
  with pytest.raises(ValueError, match=match):
    call()
