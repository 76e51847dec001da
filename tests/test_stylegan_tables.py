"""The StyleGAN tables end to end on their smoke presets: the truncation sweep and the ablation."""

import json

import pytest

from experiments.tables import stylegan_ablation, stylegan_truncation
from research.train import ConfigError


@pytest.mark.slow
def test_truncation_table_scores_one_run_at_each_psi(tmp_path):
  config = stylegan_truncation.get_config("smoke")
  out = stylegan_truncation.run(config, str(tmp_path))
  assert sorted(out["rows"]) == ["0.5", "1"]
  for row in out["rows"].values():
    assert row["num_samples"] == config.num_samples and row["ppl"] > 0
  stored = json.loads((tmp_path / "results.json").read_text())
  assert stored["rows"]["0.5"]["fid"] == out["rows"]["0.5"]["fid"]
  table = (tmp_path / "stylegan_truncation.md").read_text()
  assert "| psi |" in table and "| 0.5 |" in table
  assert (tmp_path / "stylegan_truncation.png").stat().st_size > 0


@pytest.mark.slow
def test_ablation_table_trains_each_row_as_one_program_of_members(tmp_path):
  config = stylegan_ablation.get_config("smoke")
  out = stylegan_ablation.run(config, str(tmp_path))
  assert list(out["rows"]) == ["AdaIN", "no PL"]
  for cell in out["rows"].values():
    assert len(cell["per_member"]["fid"]) == config.seeds and all(v > 0 for v in cell["per_member"]["ppl"])
  assert "| AdaIN |" in (tmp_path / "stylegan_ablation.md").read_text()


def test_tables_refuse_bad_fields_before_training(tmp_path):
  config = stylegan_truncation.get_config("smoke")
  config.psis = (0.5, 1.2)
  with pytest.raises(ConfigError, match=r"psis must be in \[0, 1\], got 1.2"):
    stylegan_truncation.run(config, str(tmp_path))
  config = stylegan_ablation.get_config("smoke")
  config.rows = ("AdaIN", "no GAN")
  with pytest.raises(ConfigError, match="no GAN"):
    stylegan_ablation.run(config, str(tmp_path))
  assert not list(tmp_path.iterdir())
