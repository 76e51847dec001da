"""The DDIM and guidance tables: their vmapped programs against separate calls, end-to-end runs, bad flags.

The end-to-end runs train one tiny model (the tables' smoke preset: experiments/diffusion.py's
smoke preset, fewer steps) inside the DDIM table's run; the guidance table then reuses that model
directory, as its documented command reuses the DDIM table's.
"""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import run_python
from experiments.tables import ddim, diffusion_model
from research.models import diffusion

# One worker runs this file: its module fixture is costly (see conftest.py).
pytestmark = pytest.mark.xdist_group("ddim_run")



def _toy_model(num_train_steps=50):
  """A TrainedModel whose 'denoiser' is a fixed affine map of (x, t, label): the samplers' plumbing only."""

  def apply(params, x, t, y, train, key):
    del train, key
    shift = params["w"] * y.astype(x.dtype) + 1e-3 * t.astype(x.dtype)  # (batch,)
    return 0.3 * x + shift.reshape((-1,) + (1,) * (x.ndim - 1))

  class Config:
    sample_batch = 5
    prediction = "epsilon"
    guidance_scale = 1.0

  Config.num_train_steps = num_train_steps
  schedule = diffusion.make_schedule("linear", num_train_steps)
  return diffusion_model.TrainedModel(Config(), {"w": jnp.float32(0.05)}, apply, schedule, (2, 2, 1), 10, "", 0.0)


def test_vmapped_rows_equal_separate_calls():
  """Each member of one S's vmapped program is the sample_ddim (or sample_sigma_hat) call it stands for."""
  model = _toy_model()
  members = [(0.0, "linear"), (0.5, "linear"), (1.0, "linear"), (0.0, "quadratic")]
  key, n, steps = jax.random.key(3), 8, 5
  drawn = ddim.sample_one_s(model, members, steps, key, n)
  labels = model.labels(n)
  for i, start in enumerate(range(0, n, model.config.sample_batch)):  # the chunks `draw` makes
    chunk = labels[start:start + model.config.sample_batch]
    chunk_key = jax.random.fold_in(key, i)
    denoise = lambda x, t, chunk=chunk: model.apply(model.params, x, t, chunk, False, None)
    shape = (chunk.shape[0],) + model.image_shape
    for member in members:
      taus = diffusion.ddim_timesteps(model.config.num_train_steps, steps, member[1])
      expected = diffusion.sample_ddim(model.schedule, denoise, chunk_key, shape, taus, member[0])
      np.testing.assert_allclose(drawn["images"][member][start:start + len(chunk)],
                                 diffusion_model.to_images(expected), atol=1e-5, err_msg=str(member))
    taus = diffusion.ddim_timesteps(model.config.num_train_steps, steps, "linear")
    expected = diffusion.sample_sigma_hat(model.schedule, denoise, chunk_key, shape, taus)
    np.testing.assert_allclose(drawn["images"][ddim.SIGMA_HAT][start:start + len(chunk)],
                               diffusion_model.to_images(expected), atol=1e-5)
  # Paired: the rows differ (η and τ matter) but start from the same x_T.
  assert np.abs(drawn["images"][members[0]] - drawn["images"][members[2]]).max() > 1e-3
  assert drawn["eta_program"]["members"] == len(members)


def test_trend_reads_the_numbers():
  steps, etas = [10, 100], [0.0, 1.0]
  paper_like = {(0.0, "linear"): {10: {"fid": 10.0}, 100: {"fid": 4.0}},
                (1.0, "linear"): {10: {"fid": 40.0}, 100: {"fid": 5.0}}}
  assert "**holds**" in ddim.trend(paper_like, etas, "linear", steps)[-1]
  reversed_ = {(0.0, "linear"): {10: {"fid": 40.0}, 100: {"fid": 5.0}},
               (1.0, "linear"): {10: {"fid": 10.0}, 100: {"fid": 30.0}}}
  assert "**does not hold**" in ddim.trend(reversed_, etas, "linear", steps)[-1]
  # The paper's numbers, but each FID uncertain by 20: the gap at S = 10 is inside the noise.
  noisy = {m: {s: {**cell, "fid_se": 20.0} for s, cell in row.items()} for m, row in paper_like.items()}
  lines = ddim.trend(noisy, etas, "linear", steps)
  assert "Above two standard errors at S = 10: **no**" in lines[1]
  assert "**holds in part**" in lines[-1]  # η = 0 is still within noise of the best
  # A second space's numbers (its prefix) are read on their own: here they reverse the trend.
  both = {m: {s: {**cell, **{f"cnn_{k}": v for k, v in reversed_[m][s].items()}} for s, cell in row.items()}
          for m, row in paper_like.items()}
  assert "**holds**" in ddim.trend(both, etas, "linear", steps)[-1]
  assert "**does not hold**" in ddim.trend(both, etas, "linear", steps, "cnn_")[-1]


@pytest.fixture(scope="session")  # session: kept when xdist interleaves other modules
def ddim_run(tmp_path_factory):
  outdir = tmp_path_factory.mktemp("ddim")
  # The smoke preset: S = 2 and 4, η = 0 and 1, the linear and quadratic τ, 10 samples per cell.
  proc = run_python(["-m", "experiments.tables.ddim", f"--outdir={outdir}",
                     "--config=experiments/tables/ddim.py:smoke"], timeout=900)
  assert proc.returncode == 0, proc.stderr[-3000:]
  return outdir


SPACES = ("", "cnn_")  # digits_sample_metrics' prefixes: the MLP classifier's features, the conv net's


def _check_two_spaces(cell: dict, real: dict, n: int) -> None:
  """A table cell carries every score in both spaces, beside the real held-out digits at its own count."""
  assert cell["num_samples"] == cell["num_scored"] == real["num_scored"] == n
  for prefix in SPACES:
    assert np.isfinite(cell[prefix + "fid"]) and cell[prefix + "fid"] >= 0, prefix
    assert cell[prefix + "fid_se"] >= 0 and cell[prefix + "kid_se"] >= 0 and np.isfinite(cell[prefix + "kid"]), prefix
    assert 0 <= cell[prefix + "precision"] <= 1 and 0 <= cell[prefix + "recall"] <= 1, prefix
    assert cell[prefix + "fid_real"] == pytest.approx(real[prefix + "fid_real"]) and real[prefix + "fid_real"] > 0
    assert cell[prefix + "fid_ratio"] == pytest.approx(cell[prefix + "fid"] / cell[prefix + "fid_real"]), prefix
  assert cell["fid"] != cell["cnn_fid"]  # two spaces, not one copied


def _real_at(n: int) -> dict:
  """The real held-out digits' first n, scored as a table's samples are."""
  from research import data as data_lib  # pylint: disable=import-outside-toplevel
  from research.tasks import classifier as classifier_tasks  # pylint: disable=import-outside-toplevel
  return classifier_tasks.digits_sample_metrics(data_lib.load("digits", "test")["image"][:n])


def test_ddim_table_end_to_end(ddim_run):
  for name in ("ddim.md", "ddim.png", "results.json"):
    assert os.path.getsize(ddim_run / name) > 0
  with open(ddim_run / "results.json") as f:
    results = json.load(f)
  rows = ["eta=0,tau=linear", "eta=1,tau=linear", "eta=0,tau=quadratic", "sigma_hat"]
  assert sorted(results["cells"]) == sorted(rows)
  real = results["real_held_out"]
  held_out = _real_at(10)
  for prefix in SPACES:
    assert real[prefix + "fid_real"] == pytest.approx(held_out[prefix + "fid"], rel=1e-5), prefix
  for row in rows:
    for s in ("2", "4"):
      cell = results["cells"][row][s]
      _check_two_spaces(cell, real, 10)
      # The η = 1 row's paired error against η = 0 (same x_T), in both spaces.
      assert all((cell.get(prefix + "fid_se_vs_eta0", -1) >= 0) == (row == "eta=1,tau=linear") for prefix in SPACES)
  assert results["model_train_results"]["step"] == 2  # trained (through the loop) in this run
  assert results["model_train_s"] > 0
  text = (ddim_run / "ddim.md").read_text()
  assert "python -m experiments.tables.ddim" in text and "| σ̂, linear τ |" in text
  for prefix, title in (("", "MLP classifier (digits_mlp_v1)"), ("cnn_", "convolutional classifier (digits_cnn_v1)")):
    hat = results["cells"]["sigma_hat"]["4"]
    assert f"## {title}: FID" in text and f"### {title}" in text
    assert f"{hat[prefix + 'fid']:.2f} ± {hat[prefix + 'fid_se']:.2f} ({hat[prefix + 'fid_ratio']:.2f}x)" in text
  assert "- S = 2, FID: the MLP and conv spaces order" in text and "- S = 4, FID:" in text


def test_guidance_reuses_the_model_and_writes_its_report(ddim_run, tmp_path):
  outdir = tmp_path / "guidance"
  stamp = os.path.getmtime(ddim_run / "model" / "results.json")
  # The smoke preset: w = 0, 1 and 3, S = 4, the DDIM table's smoke model.
  proc = run_python(["-m", "experiments.tables.guidance", f"--outdir={outdir}",
                     "--config=experiments/tables/guidance.py:smoke", f"--config.model_workdir={ddim_run / 'model'}"],
                    timeout=900)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert os.path.getmtime(ddim_run / "model" / "results.json") == stamp  # reused, not retrained
  with open(outdir / "results.json") as f:
    results = json.load(f)
  assert results["model_train_s"] == 0
  assert sorted(results["rows"]) == ["0", "1", "3"]
  for row in results["rows"].values():
    _check_two_spaces(row, results["real_held_out"], 10)
    assert 0 <= row["label_agreement"] <= 1 and 0 <= row["cnn_label_agreement"] <= 1
  assert os.path.getsize(outdir / "guidance.png") > 0
  text = (outdir / "guidance.md").read_text()
  three = results["rows"]["3"]
  for prefix in SPACES:
    fid, se, ratio = three[prefix + "fid"], three[prefix + "fid_se"], three[prefix + "fid_ratio"]
    assert f"| 3 | {fid:.2f} ± {se:.2f} | {ratio:.2f} |" in text, prefix
  assert "## Where the two spaces order the scales differently" in text and "- KID: the MLP and conv spaces" in text


@pytest.mark.parametrize("script,flags,message", [
    ("ddim", ["--config.sample_steps=10,2000"], "sample steps must be in [1, T = 1000], got 2000"),
    ("ddim", ["--config.etas=0,-0.5"], "η must be >= 0, got -0.5"),
    ("ddim", ["--config.taus=linear", "--config.taus=cubic"], "unknown taus value 'cubic'"),
    ("guidance", ["--config.tau=cubic"], "unknown τ 'cubic'"),
    ("guidance", ["--config.scales=1,-2"], "guidance scales must be >= 0"),
    ("guidance", ["--config.num_samples=3"], "num_samples must be at least 4, got 3"),
])
def test_bad_flags_are_refused_before_anything_is_written(tmp_path, script, flags, message):
  outdir = tmp_path / "out"
  proc = run_python(["-m", f"experiments.tables.{script}", f"--outdir={outdir}", *flags], timeout=300)
  assert proc.returncode != 0
  lines = proc.stderr.strip().splitlines()
  assert lines[-1].startswith("error: ") and message in lines[-1], proc.stderr[-2000:]
  assert not outdir.exists()
