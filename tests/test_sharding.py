"""Data, FSDP and tensor parallelism on 8 simulated CPU devices give the one-device run's losses,
really shard the parameters and optimizer state, and restore checkpoints onto another mesh."""

import json

import numpy as np
import pytest

import mesh_run
from conftest import once_per_session, run_python

# One worker runs this file: its session fixtures are costly (see conftest.py).
pytestmark = pytest.mark.xdist_group("eight_devices")


@pytest.fixture(scope="session")  # session: kept when xdist interleaves other modules
def eight_devices(tmp_path_factory):
  def compute():
    workdir = tmp_path_factory.mktemp("mesh")
    proc = run_python(["tests/mesh_run.py", str(workdir)],
                      env={"XLA_FLAGS": "--xla_force_host_platform_device_count=8", "PYTHONPATH": "tests"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])
  return once_per_session(tmp_path_factory, "eight_devices", compute)


@pytest.fixture(scope="session")  # session: kept when xdist interleaves other modules
def one_device(tmp_path_factory):
  def compute():
    workdir = tmp_path_factory.mktemp("single")
    return {model: mesh_run.run(model, str(workdir / model), 6).results["train_loss"] for model in
            ("vae", "transformer")}
  return once_per_session(tmp_path_factory, "one_device", compute)


@pytest.mark.slow
@pytest.mark.parametrize("model", ["vae", "transformer"])
@pytest.mark.parametrize("mesh", mesh_run.MESHES, ids=lambda m: "x".join(map(str, m)))
def test_every_mesh_gives_the_one_device_loss(eight_devices, one_device, model, mesh):
  assert eight_devices["devices"] == 8
  loss = eight_devices["runs"][f"{model}_{'x'.join(map(str, mesh))}"]["train_loss"]
  np.testing.assert_allclose(loss, one_device[model], rtol=1e-5)


def test_fsdp_and_tensor_axes_shard_parameters_and_optimizer_state(eight_devices):
  runs = eight_devices["runs"]
  # Data parallel only: everything is whole on every device.
  assert all(tuple(g) == tuple(s) for g, s in runs["transformer_8x1x1"]["params"].values())
  # FSDP 4: named kernels split 4 ways on their `embed` axis; the optimizer's moments likewise.
  fc = runs["transformer_2x4x1"]["params"]["params.Block_0.fc.kernel"]
  assert fc == [[32, 128], [8, 128]]
  mu = runs["transformer_2x4x1"]["opt_state"]["inner_state.0.mu.params.Block_0.fc.kernel"]
  assert mu == [[32, 128], [8, 128]]
  # FSDP 2 x tensor 2: embed over fsdp, mlp units and heads over tensor.
  assert runs["transformer_2x2x2"]["params"]["params.Block_0.fc.kernel"] == [[32, 128], [16, 64]]
  assert runs["transformer_2x2x2"]["params"]["params.Block_0.qkv.kernel"] == [[32, 3, 4, 8], [16, 3, 2, 8]]
  # The VAE has no names: its large kernels are split over fsdp on their largest divisible axis.
  vae = runs["vae_2x4x1"]["params"]
  assert vae["params.encoder.Dense_0.kernel"] == [[64, 64], [16, 64]]
  assert vae["params.encoder.Dense_0.bias"] == [[64], [64]]  # small: replicated
  per_device = sum(np.prod(s) for _, s in vae.values())
  whole = sum(np.prod(g) for g, _ in vae.values())
  assert per_device < 0.5 * whole


@pytest.mark.parametrize("model", ["vae", "transformer"])
def test_checkpoint_restores_onto_another_mesh(eight_devices, one_device, model):
  np.testing.assert_allclose(eight_devices["runs"][f"{model}_moved"]["train_loss"], one_device[model], rtol=1e-5)
