"""EM swept over its traced fields (tol, reg_covar): members equal their single runs; other fields are refused."""

import os

import numpy as np
import pytest

from conftest import assert_declared_metrics
from experiments import em_gmm
from research.train import ConfigError, Members


def _config():
  # One restart: with several, two restarts that reach the same optimum can swap places as the best under
  # last-bit differences between the programs, and their iteration counts differ.
  config = em_gmm.get_config("smoke")
  config.n_init = 1
  return config


def test_members_equal_their_single_runs(tmp_path):
  config = _config()
  members = Members(seeds=(0, 1, 1), hparams={"reg_covar": (1e-6, 1e-6, 0.1)})
  swept = em_gmm.run(config, str(tmp_path / "sweep"), members=members)["members"]
  assert_declared_metrics(em_gmm, config, swept)
  assert [(m["seed"], m["values"]) for m in swept] == [(0, {"reg_covar": 1e-6}), (1, {"reg_covar": 1e-6}),
                                                       (1, {"reg_covar": 0.1})]
  for i, member in enumerate(swept):
    single_config = _config()
    single_config.seed, single_config.reg_covar = member["seed"], member["values"]["reg_covar"]
    single = em_gmm.run(single_config, str(tmp_path / str(i)))
    np.testing.assert_allclose(member["lower_bound"], single["lower_bound"], rtol=1e-5)
    assert member["train_loss"] == -member["lower_bound"]
    assert member["n_iter"] == single["n_iter"] and member["converged"] == single["converged"]
    np.testing.assert_allclose(member["generating_mixture_log_likelihood"],
                               single["generating_mixture_log_likelihood"], rtol=1e-12)
  # A covariance floor of 0.1 costs likelihood on the same data.
  assert swept[2]["lower_bound"] < swept[1]["lower_bound"] - 1e-3
  assert (tmp_path / "sweep" / "gmm.png").stat().st_size > 1000


@pytest.mark.parametrize("hparams,message", [
    ({"n_components": (2.0, 4.0)},
     "cannot vary n_components: it is not a traced hyperparameter.*traced: reg_covar, tol"),
    ({"tol": (1e-3, -1.0)}, "tol must be >= 0, got -1.0"),
])
def test_bad_sweeps_are_refused_before_fitting(tmp_path, hparams, message):
  with pytest.raises(ConfigError, match=message):
    em_gmm.run(_config(), str(tmp_path / "w"), members=Members((0, 1), hparams))
  assert not os.path.exists(tmp_path / "w")
