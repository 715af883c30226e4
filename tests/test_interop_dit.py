"""Wan2.1's transformer as a DiT layout: parity with diffusers' WanTransformer3DModel (random
weights, small config), packing with Wan weights, export back to diffusers, bad checkpoints."""
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from data_pipelines import patches
from sora_jax.interop import safetensors_io as io
from sora_jax.interop import wan_dit
from sora_jax.models import dit as dit_lib

import torch  # noqa: E402  (the test extra; a missing reference fails, never skips)
import diffusers  # noqa: E402
from safetensors import torch as safetensors_torch  # noqa: E402

# fp32 parity: max abs error <= REL * max(1, max abs of the reference output). Never loosen.
REL = 1e-4
TEXT_DIM, C = 24, 4


def _close(got, want):
  err, scale = np.abs(got - want).max(), max(1.0, np.abs(want).max())
  assert err <= REL * scale, f"max abs error {err:.3g} > {REL} x {scale:.3g}"


@pytest.fixture(scope="module")
def ref(tmp_path_factory):
  """A small random WanTransformer3DModel (norm weights moved off 1), saved as diffusers."""
  torch.manual_seed(0)
  model = diffusers.WanTransformer3DModel(
      patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=16, in_channels=C,
      out_channels=C, text_dim=TEXT_DIM, ffn_dim=48, num_layers=2, rope_max_seq_len=32).eval()
  with torch.no_grad():
    for name, p in model.named_parameters():
      if "norm" in name:
        p.add_(0.3 * torch.randn_like(p))
  folder = tmp_path_factory.mktemp("wan") / "transformer"
  model.save_pretrained(folder, safe_serialization=True)
  return model, folder


def _reference(model, latents, t, text):
  """diffusers on [B, F, H, W, C] latents at flow time t [B] -> [B, F, H, W, C] velocity."""
  x = torch.from_numpy(np.ascontiguousarray(latents.transpose(0, 4, 1, 2, 3)))
  with torch.no_grad():
    out = model(x, torch.from_numpy(1000.0 * t), torch.from_numpy(text)).sample
  return out.numpy().transpose(0, 2, 3, 4, 1)


def _ours(dcfg, params, clips, ts, texts):
  """Packs clips (each [F, H, W, C]) into one row with their captions; velocities per clip."""
  toks, pos, seg, t, shapes = [], [], [], [], []
  for i, (lat, ti) in enumerate(zip(clips, ts)):
    tk, ps = patches.patchify(lat, dcfg.patch)
    toks.append(tk), pos.append(ps), seg.append(np.full(len(tk), i + 1)),
    t.append(np.full(len(tk), ti)), shapes.append(lat.shape)
  text = np.concatenate(texts)
  text_seg = np.concatenate([np.full(len(x), i + 1) for i, x in enumerate(texts)])
  row = lambda parts, dtype: jnp.asarray(np.concatenate(parts)[None], dtype)
  out = dit_lib.DiT(dcfg).apply(
      {"params": params}, row(toks, jnp.float32), row(pos, jnp.int32), row(seg, jnp.int32),
      row(t, jnp.float32), jnp.asarray(text[None]), jnp.ones((1, len(text)), bool),
      jnp.asarray(text_seg[None], jnp.int32))[0]
  sizes = np.cumsum([0] + [len(x) for x in toks])
  return [patches.unpatchify(np.asarray(out[a:b]), s, dcfg.patch)
          for a, b, s in zip(sizes[:-1], sizes[1:], shapes)]


@pytest.mark.parametrize("scan_layers", [True, False])
def test_forward_matches_diffusers(ref, scan_layers):
  model, folder = ref
  dcfg, text_dim, params = wan_dit.load(folder, scan_layers=scan_layers)
  assert text_dim == TEXT_DIM and dcfg.rope_proportions == (4, 2, 2)
  rng = np.random.default_rng(0)
  lat = rng.normal(size=(2, 3, 4, 6, C)).astype(np.float32)
  t = np.array([0.5, 0.999], np.float32)
  text = rng.normal(size=(2, 7, TEXT_DIM)).astype(np.float32)
  want = _reference(model, lat, t, text)
  for i in range(2):  # a batch of one-clip rows, as diffusers runs
    _close(_ours(dcfg, params, [lat[i]], [t[i]], [text[i]])[0], want[i])


def test_packed_clips_match_diffusers_one_by_one(ref):
  """Two clips of different sizes, noise levels and captions in one packed row give what
  diffusers gives for each alone: packing and any-size clips work with Wan's weights."""
  model, folder = ref
  dcfg, _, params = wan_dit.load(folder)
  rng = np.random.default_rng(1)
  clips = [rng.normal(size=s).astype(np.float32) for s in ((2, 4, 6, C), (1, 6, 2, C))]
  ts = [0.3, 0.8]
  texts = [rng.normal(size=(n, TEXT_DIM)).astype(np.float32) for n in (5, 3)]
  got = _ours(dcfg, params, clips, ts, texts)
  for lat, t, text, out in zip(clips, ts, texts, got):
    _close(out, _reference(model, lat[None], np.array([t], np.float32), text[None])[0])


def test_export_round_trip(ref, tmp_path):
  """convert -> export gives diffusers' tensors back exactly; diffusers loads the folder."""
  model, folder = ref
  dcfg, text_dim, params = wan_dit.load(folder)
  state = model.state_dict()
  back = wan_dit.export(params, dcfg)
  assert set(back) == set(state)
  for name, x in state.items():
    np.testing.assert_array_equal(back[name], x.numpy(), err_msg=name)
  out = wan_dit.save_diffusers(tmp_path / "exported", params, dcfg, text_dim)
  again = diffusers.WanTransformer3DModel.from_config(
      json.loads((out / "config.json").read_text())).eval()
  again.load_state_dict(safetensors_torch.load_file(out / wan_dit.WEIGHTS), strict=True)
  x = torch.randn(1, C, 2, 4, 4)
  args = (torch.tensor([250.0]), torch.randn(1, 3, TEXT_DIM))
  with torch.no_grad():
    np.testing.assert_array_equal(again(x, *args).sample.numpy(), model(x, *args).sample.numpy())


def test_bad_checkpoints_are_named(ref, tmp_path):
  _, folder = ref
  tensors = io.read_tensors(folder)
  cfg = json.loads((folder / "config.json").read_text())
  dcfg, text_dim = wan_dit.config_from_diffusers(cfg)
  bad = dict(tensors, **{"blocks.1.attn1.to_k.weight": np.zeros((32, 31), np.float32)})
  with pytest.raises(io.ConversionError, match=r"'blocks\.1\.attn1\.to_k\.weight' has shape "
                     r"\(32, 31\)"):
    wan_dit.convert(bad, dcfg, text_dim)
  missing = {k: v for k, v in tensors.items() if k != "proj_out.bias"}
  with pytest.raises(io.ConversionError, match=r"'proj_out\.bias' is missing"):
    wan_dit.convert(missing, dcfg, text_dim)
  extra = dict(tensors, **{"blocks.2.norm2.weight": np.ones(32, np.float32)})
  with pytest.raises(io.ConversionError, match=r"blocks\.2\.norm2\.weight.*not used"):
    wan_dit.convert(extra, dcfg, text_dim)
  with pytest.raises(io.ConversionError, match=r"image_dim=1280"):
    wan_dit.config_from_diffusers(dict(cfg, image_dim=1280))  # image-to-video: not yet
  with pytest.raises(ValueError, match="qk_norm_scope='head' is not Wan2.1's"):
    wan_dit.export(params=None, dcfg=dit_lib.get_dit_config("tiny"))
  assert jax.tree.leaves(wan_dit.abstract_params(dcfg, text_dim))
