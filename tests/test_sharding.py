"""One code path from a laptop to a pod: meshes, rule presets, sharded steps, restores.

On 8 fake CPU devices (conftest) with asymmetric meshes (2x4, 4x2, 1x8; context 2 and 4),
so swapped axes show up:
  * a DiT train step (runlocal config, real step function) under every rule preset gives
    the 1-device loss, gradients (Adam's first moment after one step is 0.1 x the clipped
    gradient) and params to 1e-5 in fp32; the context presets really run ring and
    all-to-all attention; the VAE's spatial preset likewise;
  * checkpoints saved on one mesh restore on another (other device count, other axis
    sizes), train state and data iterator alike;
  * bad meshes and indivisible shardings fail with errors that name the dimension, the
    axes and their sizes;
  * `launch/aot_compile.py` compiles for a fake CPU topology and prints memory as JSON;
  * sampling with the same seed gives the same video on 1 and 8 devices.
The XLA:CPU backend is asked for quick, unoptimised code (`_FAST`): the partitioning under
test is the same, and these compiles take a third of the time.
"""
import dataclasses
import functools
import json
import os
import subprocess
import sys

import flax.linen as nn
import grain
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.sharding import NamedSharding, PartitionSpec as P

from configs import dit as dit_config_lib
from configs import vae as vae_config_lib
from data_pipelines import packing
from data_pipelines import patches
from sora_jax.sharding import distributed
from sora_jax.diffusion import solvers
from sora_jax.models import dit as dit_lib
from sora_jax.models import layers
from sora_jax.sharding import mesh as mesh_lib
from sora_jax.sharding import rules as rules_lib
from sora_jax import checkpoints
from sora_jax.train import dit_task
from sora_jax.train import vae_task

_FAST = {"xla_backend_optimization_level": 0, "xla_llvm_disable_expensive_passes": True}
_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _close(a, b, what):
  jax.tree.map(lambda x, y: np.testing.assert_allclose(np.asarray(x), np.asarray(y),
                                                       rtol=1e-5, atol=1e-5, err_msg=what),
               a, b)


# ----------------------------------------------------------------------------- meshes


@dataclasses.dataclass(frozen=True)
class _FakeDevice:
  id: int
  slice_index: int
  process_index: int = 0
  platform: str = "cpu"
  device_kind: str = "cpu"


def test_mesh_dcn_axis_spans_slices():
  """Two slices of 4: with dcn data=2, only the data axis crosses slices."""
  devices = [_FakeDevice(i, i // 4) for i in range(8)]
  grid = mesh_lib.hybrid_device_array((4, 2, 1, 1), (2, 1, 1, 1), devices)
  slices = np.vectorize(lambda d: d.slice_index)(grid)[:, :, 0, 0]
  np.testing.assert_array_equal(slices, [[0, 0], [0, 0], [1, 1], [1, 1]])


def test_mesh_process_batch_shard_for_axes_across_hosts():
  """Two hosts of 4 devices: which batch rows each host's input pipeline must load."""
  def grid(shape, process_of):
    devices = [_FakeDevice(i, 0, process_of(i)) for i in range(8)]
    return np.array(devices, dtype=object).reshape(shape)

  data_across = grid((2, 1, 4, 1), lambda i: i // 4)  # data=2 spans the hosts
  assert [mesh_lib.process_batch_shard(data_across, p) for p in (0, 1)] == [(0, 2), (1, 2)]
  context_across = grid((1, 2, 4, 1), lambda i: (i % 4) // 2)  # context spans the hosts
  assert [mesh_lib.process_batch_shard(context_across, p) for p in (0, 1)] == [(0, 1)] * 2
  with pytest.raises(ValueError, match=r"batch rows \[\(0, 2, 4, 6\), \(1, 3, 5, 7\)\]"):
    mesh_lib.process_batch_shard(grid((8, 1, 1, 1), lambda i: i % 2), 0)


@pytest.mark.parametrize("sizes, match", [
    ({"data": 3}, "multiply to 3 but there are 8 devices"),
    ({"data": -1, "dcn": {"data": 2}}, r"multiplies to 2 slices, but the 8 devices form 1 "),
    ({"data": 4, "fsdp": 2, "dcn": {"fsdp": 4}}, r"mesh.dcn.fsdp=4 must be a positive "
                                                 r"divisor of .* mesh.fsdp=2"),
    ({"data": -1, "dcn": {"pipeline": 2}}, r"Unknown mesh.dcn axes \['pipeline'\]"),
])
def test_bad_mesh_gives_clear_error(sizes, match):
  with pytest.raises(ValueError, match=match):
    mesh_lib.make_mesh(sizes)


def test_mesh_dcn_of_one_is_the_plain_mesh():
  mesh = mesh_lib.make_mesh({"data": 2, "fsdp": 4, "dcn": {"data": 1}})
  assert dict(mesh.shape) == {"data": 2, "fsdp": 4, "context": 1, "tensor": 1}
  assert all(t == jax.sharding.AxisType.Auto for t in mesh.axis_types)


def test_mesh_multihost_launch_detection():
  detect = distributed.multi_process_launcher
  assert detect({}) is None
  assert detect({"JAX_COORDINATOR_ADDRESS": "10.0.0.1:1234"}) == "JAX_COORDINATOR_ADDRESS"
  assert detect({"SLURM_JOB_ID": "7", "SLURM_NTASKS": "16"}) == "SLURM"
  assert detect({"SLURM_JOB_ID": "7", "SLURM_NTASKS": "1"}) is None  # one task
  assert detect({"TPU_WORKER_HOSTNAMES": "h0,h1,h2,h3"}) == "TPU pod"
  assert detect({"TPU_WORKER_HOSTNAMES": "localhost"}) is None  # one TPU host
  assert not distributed.initialize_distributed("off", {"JAX_COORDINATOR_ADDRESS": "x:1"})
  assert not distributed.initialize_distributed("auto", {})
  with pytest.raises(ValueError, match="--distributed='maybe'"):
    distributed.initialize_distributed("maybe", {})
  with pytest.raises(ValueError, match="JAX_PROCESS_ID is not"):  # all would be rank 0
    distributed.initialize_distributed("auto", {"JAX_COORDINATOR_ADDRESS": "x:1",
                                                "JAX_NUM_PROCESSES": "2"})


# ----------------------------------------------------------------------------- rules


def test_shard_rules_put_params_and_activations_on_different_axes():
  rules = rules_lib.get("fsdp_tensor")
  assert nn.logical_to_mesh_axes(("batch", "tokens", "embed"), rules) == P(
      ("data", "fsdp"), None, None)  # activations: embed stays whole
  assert nn.logical_to_mesh_axes(("embed", "heads", "kv"), rules) == P("fsdp", "tensor", None)
  assert nn.logical_to_mesh_axes(("batch", "tokens", "embed"),
                                 rules_lib.get("fsdp_context")) == P(("data", "fsdp"),
                                                                     "context", None)
  assert nn.logical_to_mesh_axes(("batch", "frames", "height", "width", "channels"),
                                 rules_lib.get("vae_spatial")) == P(
                                     "data", None, ("fsdp", "context"), None, None)
  with pytest.raises(ValueError, match=r"Unknown sharding rules 'zero3'.*known presets"):
    rules_lib.get("zero3")


def _small_state(boxed: bool):
  model = layers.FeedForward(hidden=32)
  x = jnp.zeros((2, 4, 16))

  def init(rng):
    params = model.init(rng, x)
    params = params if boxed else nn.meta.unbox(params)
    tx = optax.adamw(1e-3)
    return {"step": jnp.zeros((), jnp.int32), "params": params, "opt": tx.init(params),
            "ema": jax.tree.map(jnp.copy, params)}

  return init, model, x


def test_shard_state_boxed_and_unboxed_params_agree():
  """Names from boxes, or from `param_specs` for unboxed params: Adam moments and the EMA
  get the params' shardings, counters are replicated."""
  mesh = mesh_lib.make_mesh({"data": 2, "fsdp": 4})
  init_boxed, model, x = _small_state(True)
  init_plain, _, _ = _small_state(False)
  from_boxes = rules_lib.state_shardings(
      mesh, jax.eval_shape(init_boxed, jax.random.key(0)), "fsdp")
  from_specs = rules_lib.state_shardings(
      mesh, jax.eval_shape(init_plain, jax.random.key(0)), "fsdp",
      rules_lib.param_specs(model, x))
  assert jax.tree.structure(from_boxes) == jax.tree.structure(from_specs)
  assert jax.tree.leaves(from_boxes) == jax.tree.leaves(from_specs)
  up = P("fsdp", None)  # FeedForward "up" kernel: ("embed", "mlp")
  adam = from_specs["opt"][0]
  for tree in (from_specs["params"], adam.mu, adam.nu, from_specs["ema"]):
    assert tree["params"]["up"]["kernel"].spec == up
  assert from_specs["step"].spec == P() and adam.count.spec == P()


def test_shard_indivisible_dimension_names_axis_and_sizes():
  cfg = _config("fsdp_tensor")
  task = dit_task.DiTTask(cfg)
  abstract = jax.eval_shape(task.init_state, jax.random.key(0))
  with pytest.raises(ValueError, match=r"logical axis 'heads'.* has size 2, which is not "
                                       r"divisible by mesh axes \('tensor',\) of sizes \[8\]"):
    task.state_shardings(mesh_lib.make_mesh({"tensor": 8}), abstract)


# ----------------------------------------------------------------------------- DiT step


def _config(rules, attention=""):
  arg = f"runlocal=True,rules={rules}" + (f",attention={attention}" if attention else "")
  return dit_config_lib.get_config(arg)


def _packed_batch(cfg, seed=0):
  """8 packed rows of random latent clips with captions (some empty), no data set."""
  r = np.random.default_rng(seed)
  text_len, examples = cfg.packing.text_len, []
  for i in range(40):
    shape = (2, 8, 8, 8) if i % 3 else (1, 8, 8, 8)  # runlocal latents (T', h, w, C)
    n = int(r.integers(1, text_len + 1)) if i % 5 else 0
    ids = np.zeros(text_len, np.int32)
    ids[:n] = r.integers(1, cfg.text.vocab_size, n)
    examples.append(packing.clip_example(r.normal(size=shape).astype(np.float32), ids,
                                         ids > 0, tuple(cfg.model.patch), i))
  rows = list(packing.pack_examples(examples, cfg.packing.seq_len, cfg.packing.max_clips))
  return {k: np.stack([row[k] for row in rows[:8]]) for k in dit_task.DEVICE_KEYS}


def _trained_looking(state, seed=0):
  """The state with every param and EMA leaf perturbed and the step past the warm-up.

  A fresh DiT's gates and output layer start at zero and the LR warms up from 0 at step 0:
  one step from it would change nothing but the final layer, whatever attention or the
  text encoder computed. Perturbed, every block's gradient is non-zero and the update moves
  every param.
  """
  leaves, tree = jax.tree.flatten(state.params)
  keys = jax.random.split(jax.random.key(seed), len(leaves))
  params = jax.tree.unflatten(tree, [x + 0.05 * jax.random.normal(k, x.shape, x.dtype)
                                     for x, k in zip(leaves, keys)])
  # The schedule reads the optimizer's own step counts, not `state.step`.
  opt_state = jax.tree_util.tree_map_with_path(
      lambda p, x: jnp.full_like(x, 50) if "count" in jax.tree_util.keystr(p) else x,
      state.opt_state)
  return state.replace(step=jnp.asarray(50, jnp.int32), params=params, opt_state=opt_state,
                       ema_params=jax.tree.map(jnp.copy, params))


@pytest.fixture(scope="module")
def reference_step():
  """A trained-looking state, batch, rng and the 1-device result of one step."""
  cfg = _config("dp")
  task = dit_task.DiTTask(cfg)
  init = jax.jit(task.init_state)
  state = _trained_looking(init.lower(jax.random.key(0)).compile(_FAST)(jax.random.key(0)))
  batch, rng = _packed_batch(cfg), jax.random.key(1)
  step = jax.jit(task.make_train_step()).lower(state, batch, rng).compile(_FAST)
  return state, batch, rng, step(state, batch, rng)


@pytest.mark.parametrize("name, sizes, rules, attention, kernel_spec", [
    ("2x4", {"data": 2, "fsdp": 4}, "fsdp", "", P(None, "fsdp", None)),
    ("4x2", {"fsdp": 4, "tensor": 2}, "fsdp_tensor", "", P(None, "fsdp", "tensor")),
    pytest.param("1x8", {"fsdp": 8}, "fsdp", "", P(None, "fsdp", None),
                 marks=pytest.mark.slow),  # default suite: 2x4 and 4x2 catch swapped axes
    ("context4_ring", {"fsdp": 2, "context": 4}, "fsdp_context", "ring",
     P(None, "fsdp", None)),
    ("context2_all_to_all", {"fsdp": 4, "context": 2}, "fsdp_context", "all_to_all",
     P(None, "fsdp", None)),
])
def test_shard_train_step_equals_single_device(reference_step, name, sizes, rules,
                                               attention, kernel_spec):
  del name
  state0, host_batch, rng, (ref_state, ref_metrics) = reference_step
  cfg = _config(rules, attention)
  mesh = mesh_lib.make_mesh(sizes)
  task = dit_task.DiTTask(cfg)
  abstract = jax.eval_shape(task.init_state, jax.random.key(0))
  shardings = task.state_shardings(mesh, abstract)
  state = jax.device_put(state0, shardings)
  batch = task.device_batch(host_batch, mesh)  # global arrays, batch-sharded
  with rules_lib.mesh_and_rules(mesh, rules):
    step = jax.jit(rules_lib.with_rules(task.make_train_step(), rules),
                   out_shardings=(shardings, None))
    lowered = step.lower(state, batch, rng)
    new, metrics = lowered.compile(_FAST)(state, batch, rng)
  # The context backends really run (explicit collectives before SPMD partitioning).
  text = lowered.as_text()
  assert ("collective_permute" in text) == (attention == "ring")
  assert ("all_to_all" in text) == (attention == "all_to_all")
  kernel = new.params["dit"]["params"]["blocks"]["mlp"]["up"]["kernel"]
  assert kernel.sharding.spec == kernel_spec
  assert kernel.addressable_shards[0].data.size < kernel.size  # really split
  for key in ("loss", "grad_norm"):
    np.testing.assert_allclose(metrics[key], ref_metrics[key], rtol=1e-5, atol=1e-5)
  b1 = cfg.optim.b1
  grads = jax.tree.map(lambda m: m / (1 - b1), new.opt_state[1][0].mu)
  ref_grads = jax.tree.map(lambda m: m / (1 - b1), ref_state.opt_state[1][0].mu)
  # Attention, MLPs and the text encoder all get a gradient, so a wrong sharded attention
  # or text path shows in the comparison below.
  for path, g in jax.tree_util.tree_leaves_with_path(ref_grads):
    if "kernel" in jax.tree_util.keystr(path):
      assert float(jnp.abs(g).max()) > 1e-7, jax.tree_util.keystr(path)
  moved = jax.tree.map(lambda a, b: float(jnp.abs(a - b).max()), ref_state.params,
                       state0.params)
  assert min(jax.tree.leaves(moved)) > 0  # the step updated every param
  _close(grads, ref_grads, "gradients")
  _close(new.params, ref_state.params, "params")
  _close(new.ema_params, ref_state.ema_params, "ema")


@pytest.mark.slow  # compile-heavy: `make test-all`
def test_shard_vae_spatial_step_equals_single_device():
  """The VAE preset splits frames by height over fsdp x context (convs exchange halos)."""
  cfg = vae_config_lib.get_config("variant=tiny,runlocal=True,rules=vae_spatial")
  task = vae_task.VAETask(cfg)
  state0 = task.init_state(jax.random.key(0))
  video = np.random.default_rng(0).uniform(-1, 1, (4, 5, 32, 32, 3)).astype(np.float32)
  rng = jax.random.key(1)
  step = jax.jit(task.make_train_step())
  ref_state, ref_metrics = step.lower(state0, {"video": video}, rng).compile(_FAST)(
      state0, {"video": video}, rng)
  mesh = mesh_lib.make_mesh({"data": 2, "fsdp": 2, "context": 2})
  abstract = jax.eval_shape(task.init_state, jax.random.key(0))
  shardings = task.state_shardings(mesh, abstract)
  state = jax.device_put(state0, shardings)
  batch = task.device_batch({"video": video}, mesh)
  with rules_lib.mesh_and_rules(mesh, "vae_spatial"):
    step = jax.jit(rules_lib.with_rules(task.make_train_step(), "vae_spatial"),
                   out_shardings=(shardings, None))
    compiled = step.lower(state, batch, rng).compile(_FAST)
    new, metrics = compiled(state, batch, rng)
  assert "collective-permute" in compiled.as_text()  # halo exchange between row blocks
  for key in ("loss", "grad_norm"):
    np.testing.assert_allclose(metrics[key], ref_metrics[key], rtol=1e-5, atol=1e-5)
  _close(new.params, ref_state.params, "params")
  _close(new.opt_state, ref_state.opt_state, "optimizer state")


# ----------------------------------------------------------------------------- restore


_SMALL_PAIRS = [  # (mesh sizes, spec of w, devices) at save -> at restore
    (({"data": 2, "fsdp": 4}, P("fsdp", "data"), 8), ({"fsdp": 8}, P(None, "fsdp"), 8)),
    (({"fsdp": 4, "tensor": 2}, P("fsdp", "tensor"), 8),
     ({"data": 4, "fsdp": 2}, P("data", "fsdp"), 8)),
    (({"fsdp": 8}, P("fsdp"), 8), ({"fsdp": 2, "tensor": 2}, P("tensor", "fsdp"), 4)),
    (({"context": 4, "fsdp": 2}, P("context", "fsdp"), 8), ({"data": 1}, P(), 1)),
    (({"data": 1}, P(), 1), ({"data": 4, "context": 2}, P(("data", "context")), 8)),
]


def _mesh_on(sizes, num_devices):
  return mesh_lib.make_mesh(sizes, devices=jax.devices()[:num_devices])


@pytest.mark.parametrize("save, restore", _SMALL_PAIRS)
def test_restore_small_state_across_meshes(tmp_path, save, restore):
  values = {"w": np.arange(8 * 16, dtype=np.float32).reshape(8, 16),
            "b": np.linspace(-1, 1, 16, dtype=np.float32), "step": np.int32(7)}

  def shardings(sizes, spec, num_devices):
    mesh = _mesh_on(sizes, num_devices)
    return {"w": NamedSharding(mesh, spec), "b": NamedSharding(mesh, P()),
            "step": NamedSharding(mesh, P())}

  state = jax.tree.map(jax.device_put, values, shardings(*save))
  ckpt = checkpoints.Checkpointer(str(tmp_path), async_save=False)
  ckpt.save(1, state)
  ckpt.wait()
  target = shardings(*restore)
  restored, _ = ckpt.restore(1, checkpoints.abstract_with_shardings(values, target))
  ckpt.close()
  for key in values:
    np.testing.assert_array_equal(np.asarray(restored[key]), values[key])
    assert restored[key].sharding == target[key]
  assert len(restored["w"].sharding.device_set) == restore[2]


def _distinct(state):
  """Every leaf shifted by its own amount: moments, EMA and params differ, step != 0."""
  leaves, treedef = jax.tree.flatten(state)
  return jax.tree.unflatten(treedef, [
      x + 0.01 * (i + 1) if jnp.issubdtype(x.dtype, jnp.floating) else x + 3
      for i, x in enumerate(leaves)])


def test_restore_iterator_saved_by_another_process_count_restarts_it(tmp_path, caplog):
  """grain saves one iterator file per process; a run with another process count restores
  the state, restarts the data iterator and says so (tests/test_multiprocess.py runs it for
  real with two processes)."""
  def data():
    return iter(grain.MapDataset.range(16).batch(2).to_iter_dataset())

  it = data()
  next(it), next(it)
  ckpt = checkpoints.Checkpointer(str(tmp_path), async_save=False)
  ckpt.save(3, {"w": np.ones(4, np.float32)}, it)
  ckpt.wait()
  assert ckpt.data_process_count(3) == 1
  _, it_a = ckpt.restore(3, {"w": jax.ShapeDtypeStruct((4,), np.float32)}, data())
  np.testing.assert_array_equal(next(it_a), [4, 5])  # same process count: exact position
  data_dir = tmp_path / "checkpoints" / "3" / "data"
  (data_dir / "process_0-of-1.json").rename(data_dir / "process_0-of-2.json")
  assert ckpt.data_process_count(3) == 2
  with caplog.at_level("WARNING"):
    state, it_b = ckpt.restore(3, {"w": jax.ShapeDtypeStruct((4,), np.float32)}, data())
  ckpt.close()
  np.testing.assert_array_equal(np.asarray(state["w"]), np.ones(4))
  np.testing.assert_array_equal(next(it_b), [0, 1])  # from the beginning, with a warning
  assert "holds the data iterator of 2 process(es), this run has 1" in caplog.text


@pytest.mark.slow  # compile-heavy: `make test-all`
def test_restore_dit_state_and_iterator_on_another_mesh(tmp_path):
  """A DiT runlocal state (params, Adam, EMA) saved on 8 devices under "fsdp" restores on 4
  devices under "fsdp_tensor", with the data iterator at the same position."""
  cfg_a, cfg_b = _config("fsdp"), _config("fsdp_tensor")
  task_a = dit_task.DiTTask(cfg_a)
  init = task_a.init_state
  abstract = jax.eval_shape(init, jax.random.key(0))
  mesh_a = mesh_lib.make_mesh({"data": 2, "fsdp": 4})
  with jax.set_mesh(mesh_a):  # as the loop does: params never exist unsharded
    init = jax.jit(init, out_shardings=task_a.state_shardings(mesh_a, abstract))
    state = init.lower(jax.random.key(0)).compile(_FAST)(jax.random.key(0))
  state = jax.jit(_distinct, out_shardings=jax.tree.map(lambda x: x.sharding, state))(state)

  def data():
    return iter(grain.MapDataset.range(64).shuffle(seed=3).batch(4).to_iter_dataset())

  it = data()
  for _ in range(3):
    next(it)
  ckpt = checkpoints.Checkpointer(str(tmp_path))
  ckpt.save(5, state, it, {"task": "dit"})
  expected_next = next(it)
  ckpt.close()

  mesh_b = mesh_lib.make_mesh({"fsdp": 2, "tensor": 2}, devices=jax.devices()[:4])
  shardings = dit_task.DiTTask(cfg_b).state_shardings(mesh_b, abstract)
  ckpt = checkpoints.Checkpointer(str(tmp_path))
  restored, it_b = ckpt.restore(5, checkpoints.abstract_with_shardings(abstract, shardings),
                                data())
  ckpt.close()
  jax.tree.map(lambda x, y: np.testing.assert_array_equal(np.asarray(x), np.asarray(y)),
               restored, state)
  jax.tree.map(lambda x, s: x.sharding == s or pytest.fail(f"{x.sharding} != {s}"),
               restored, shardings)
  q = restored.params["dit"]["params"]["blocks"]["self_attention"]["query"]["kernel"]
  assert q.sharding.spec == P(None, "fsdp", "tensor", None) and len(q.devices()) == 4
  np.testing.assert_array_equal(next(it_b), expected_next)


# ----------------------------------------------------------------------------- AOT


def _aot(*args, timeout=600):
  env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
  return subprocess.run([sys.executable, os.path.join(_ROOT, "launch", "aot_compile.py"),
                         *args], cwd=_ROOT, env=env, capture_output=True, text=True,
                        timeout=timeout)


@pytest.mark.slow  # compile-heavy: `make test-all`
def test_aot_compile_on_fake_cpu_mesh():
  """The train step compiles for `cpu:8` with context parallelism; memory comes out as JSON."""
  proc = _aot("--config", "configs/dit.py:runlocal=True,rules=fsdp_context,attention=ring",
              "--topology", "cpu:8", "--mesh", "fsdp=4,context=2", "--compiler_options",
              "xla_backend_optimization_level=0,xla_llvm_disable_expensive_passes=true")
  assert proc.returncode == 0, proc.stderr[-3000:]
  report = json.loads(proc.stdout)
  assert report["mesh"] == {"data": 1, "fsdp": 4, "context": 2, "tensor": 1}
  assert report["num_devices"] == 8 and report["rules"] == "fsdp_context"
  mem = report["memory_per_device"]
  assert mem["argument_bytes"] > 0 and mem["total_bytes"] >= mem["temp_bytes"]
  # fsdp=4 splits most of the state 4 ways: well under the full (params + Adam + EMA) size.
  assert report["state_bytes_per_device"] < 4 * 4 * report["params"] / 2


def test_aot_compile_mesh_names_what_a_target_needs():
  proc = _aot("--config", "configs/dit.py:variant=B", "--topology", "v5e-256", timeout=120)
  assert proc.returncode == 2 and "needs libtpu" in proc.stderr, proc.stderr[-2000:]
  proc = _aot("--config", "configs/dit.py", "--topology", "tpu9-3", timeout=120)
  assert proc.returncode == 2 and "Unknown --topology 'tpu9-3'" in proc.stderr
  assert "cpu:N" in _aot("--help", timeout=120).stdout


# ----------------------------------------------------------------------------- sampling


def test_mesh_same_seed_same_sample_on_1_and_8_devices():
  """Euler sampling of a (perturbed) tiny DiT: noise, model and sampler under fsdp +
  ring context parallelism on 8 devices give the 1-device video."""
  def model(backend):
    return dit_lib.DiT(dit_lib.get_dit_config("tiny", width=32, depth=2, num_heads=2,
                                              latent_channels=4, attention_backend=backend))

  b, n, tl = 2, 32, 8
  latents = np.zeros((2, 8, 8, 4), np.float32)  # one clip: 2 x 4 x 4 = 32 tokens
  _, positions = patches.patchify(latents, (1, 2, 2))
  inputs = dict(positions=jnp.asarray(np.broadcast_to(positions, (b, n, 3))),
                segment_ids=jnp.ones((b, n), jnp.int32),
                text=jax.random.normal(jax.random.key(2), (b, tl, 16)),
                text_mask=jnp.arange(tl)[None] < jnp.array([[5], [8]]))
  @jax.jit
  def init(rng):
    params = model("xla").init(rng, jnp.zeros((b, n, 16)), t=jnp.zeros((b, n)), **inputs)
    # Zero-initialised output layers make a fresh DiT predict exactly 0: perturb them all.
    leaves, treedef = jax.tree.flatten(nn.meta.unbox(params))
    keys = jax.random.split(jax.random.key(3), len(leaves))
    return jax.tree.unflatten(treedef, [x + 0.05 * jax.random.normal(k, x.shape)
                                        for x, k in zip(leaves, keys)])

  params = init(jax.random.key(0))

  def generate(backend, rng):
    def velocity(x, t):
      return model(backend).apply(params, x, t=jnp.full((b, n), t), **inputs)
    x1 = solvers.init_noise(rng, (b, n, 16))
    return solvers.sample(velocity, x1, solvers.timesteps(4, shift=2.0))

  rng = jax.random.key(7)
  one = jax.jit(functools.partial(generate, "xla")).lower(rng).compile(_FAST)(rng)
  mesh = mesh_lib.make_mesh({"fsdp": 2, "context": 4})
  with rules_lib.mesh_and_rules(mesh, "fsdp_context"):
    fn = jax.jit(rules_lib.with_rules(functools.partial(generate, "ring"), "fsdp_context"))
    eight = fn.lower(rng).compile(_FAST)(rng)
  assert float(jnp.std(one)) > 0.1
  np.testing.assert_allclose(eight, one, rtol=1e-5, atol=1e-5)
