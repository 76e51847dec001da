"""FID, precision/recall and class shares: closed forms, scipy parity, feature spaces and the digits feature network."""

import glob
import os
import threading
import time

import numpy as np
import pytest
import scipy.linalg

from research import data
from research.metrics import fid
from research.metrics.features import FeatureSpace
from research.models import classifier as classifier_lib
from research.tasks import classifier as classifier_tasks

# One worker runs this file: its module fixture is costly (see conftest.py).
pytestmark = pytest.mark.xdist_group("fid_classifier")


@pytest.fixture(scope="session")
def classifier_root(tmp_path_factory):
  # Trained once per session, by the real loop, into a private cache (never the user's).
  root = str(tmp_path_factory.mktemp("fid_classifier"))
  classifier_tasks.digits_classifier(root)
  return root


@pytest.fixture(scope="session")
def classifier(classifier_root):
  return classifier_tasks.digits_classifier(classifier_root)


@pytest.fixture(scope="session")
def digits_test():
  return data.load("digits", "test")


def scipy_frechet(a, b):
  """The standard formula, as the FID reference code writes it, with scipy's general sqrtm."""
  mu1, mu2 = a.mean(0), b.mean(0)
  s1, s2 = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
  covmean = scipy.linalg.sqrtm(s1 @ s2).real
  return float(np.sum((mu1 - mu2) ** 2) + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean))


# Fréchet distance.


@pytest.mark.parametrize("n,d,seed", [(200, 4, 0), (500, 16, 1), (300, 32, 2)])
def test_frechet_matches_scipy_sqrtm(n, d, seed):
  rng = np.random.default_rng(seed)
  mixing = rng.normal(size=(d, d))
  a = rng.normal(size=(n, d)) @ mixing
  b = rng.normal(size=(n, d)) @ (mixing + 0.5 * rng.normal(size=(d, d))) + rng.normal(size=d)
  np.testing.assert_allclose(fid.frechet_distance(a, b), scipy_frechet(a, b), rtol=1e-7)
  np.testing.assert_allclose(fid.frechet_distance(b, a), fid.frechet_distance(a, b), rtol=1e-9)


def test_frechet_identical_sets_is_zero():
  a = np.random.default_rng(0).normal(size=(100, 8))
  assert fid.frechet_distance(a, a) == pytest.approx(0.0, abs=1e-9)


def test_frechet_shifted_means_is_squared_shift():
  rng = np.random.default_rng(0)
  a = rng.normal(size=(100, 8)) @ rng.normal(size=(8, 8))
  shift = rng.normal(size=8)
  assert fid.frechet_distance(a, a + shift) == pytest.approx(np.sum(shift ** 2), rel=1e-8)


def test_frechet_diagonal_covariances_closed_form():
  # Commuting covariances: Tr(S1 + S2 - 2 (S1 S2)^(1/2)) = sum (sqrt(a_i) - sqrt(b_i))^2.
  var_a, var_b = np.array([1.0, 4.0, 0.25, 9.0]), np.array([4.0, 1.0, 0.25, 0.0])
  mu_a, mu_b = np.zeros(4), np.array([1.0, 0.0, -2.0, 0.0])
  expected = np.sum((mu_a - mu_b) ** 2) + np.sum((np.sqrt(var_a) - np.sqrt(var_b)) ** 2)
  got = fid.frechet_distance_from_stats(mu_a, np.diag(var_a), mu_b, np.diag(var_b))
  assert got == pytest.approx(expected, rel=1e-10)


def test_frechet_singular_covariances_stay_finite():
  # Fewer samples than features: both covariances are singular, where sqrtm struggles.
  rng = np.random.default_rng(0)
  a, b = rng.normal(size=(10, 32)), rng.normal(size=(10, 32)) + 1.0
  distance = fid.frechet_distance(a, b)
  assert np.isfinite(distance) and distance > 32  # at least the squared mean shift, about 32


def test_frechet_rejects_bad_shapes():
  with pytest.raises(ValueError, match="at least 2"):
    fid.frechet_distance(np.zeros((1, 3)), np.zeros((5, 3)))
  with pytest.raises(ValueError, match="mismatched"):
    fid.frechet_distance(np.ones((5, 3)), np.ones((5, 4)))


@pytest.mark.parametrize("m", [500, 2000])
def test_frechet_se_matches_delta_method(m):
  # Real N(0, I) with exact statistics, fakes N(shift, I): the distance is |mean - 0|^2 + O(1/m), whose
  # standard deviation over draws of m fakes is 2 |shift| / sqrt(m) to first order (the covariance
  # terms have zero first derivative at equal covariances).
  rng = np.random.default_rng(0)
  real = rng.normal(size=(20000, 2))
  shift = np.array([3.0, 0.0])
  fake = shift + rng.normal(size=(m, 2))
  se = fid.frechet_distance_se(real, fake, num_resamples=400, seed=1)
  assert se == pytest.approx(2 * 3.0 / np.sqrt(m), rel=0.15)
  assert fid.frechet_distance_se(real, fake, num_resamples=400, seed=1) == se  # seeded


def test_frechet_difference_se_paired_and_unpaired():
  rng = np.random.default_rng(0)
  real = rng.normal(size=(20000, 2))
  base = rng.normal(size=(1000, 2))
  a, b = base + [3.0, 0.0], base + [2.0, 0.0]
  assert fid.frechet_difference_se(real, a, a) == 0.0
  # Paired by one draw: |m + x|^2 - |m' + x|^2 = const + 2 (m - m') . x, so the SE is 2 |m - m'| / sqrt(M).
  assert fid.frechet_difference_se(real, a, b, num_resamples=400) == pytest.approx(2 * 1.0 / np.sqrt(1000), rel=0.15)
  # Unpaired draws add the two SEs in quadrature: 2 sqrt(9 + 4) / sqrt(M).
  c = rng.normal(size=(1000, 2)) + [2.0, 0.0]
  assert fid.frechet_difference_se(real, a, c, num_resamples=400) == pytest.approx(2 * np.sqrt(13 / 1000), rel=0.15)
  with pytest.raises(ValueError, match="one shape"):
    fid.frechet_difference_se(real, a, b[:10])


def test_frechet_se_rejects_bad_input():
  with pytest.raises(ValueError, match="at least 2"):
    fid.frechet_distance_se(np.zeros((5, 3)), np.zeros((5, 3)), num_resamples=1)
  with pytest.raises(ValueError, match="fake_feats"):
    fid.frechet_distance_se(np.zeros((5, 3)), np.zeros((1, 3)))


# Precision and recall.


def _clusters(rng, per_cluster, centres):
  return np.concatenate([c + rng.normal(size=(per_cluster, centres.shape[1])) for c in centres])


def test_precision_recall_identical_sets():
  a = np.random.default_rng(0).normal(size=(300, 8))
  assert fid.precision_recall(a, a) == (1.0, 1.0)


def test_precision_recall_one_of_five_modes():
  rng = np.random.default_rng(0)
  centres = 20.0 * rng.normal(size=(5, 8))
  real = _clusters(rng, 200, centres)
  fake = _clusters(rng, 200, centres[:1])  # fresh draws from the first mode only
  precision, recall = fid.precision_recall(real, fake)
  assert precision > 0.85
  assert recall < 0.25


def test_precision_recall_far_fakes():
  rng = np.random.default_rng(0)
  real = rng.normal(size=(200, 8))
  precision, recall = fid.precision_recall(real, rng.normal(size=(200, 8)) + 100.0)
  assert (precision, recall) == (0.0, 0.0)


def test_precision_recall_chunked_like_whole(monkeypatch):
  rng = np.random.default_rng(0)
  real, fake = rng.normal(size=(150, 4)), rng.normal(size=(120, 4)) + 0.5
  whole = fid.precision_recall(real, fake, k=5)
  monkeypatch.setattr(fid, "ROWS", 16)
  assert fid.precision_recall(real, fake, k=5) == whole


def test_precision_recall_rejects_bad_k():
  with pytest.raises(ValueError, match="k must be"):
    fid.precision_recall(np.zeros((3, 2)), np.zeros((10, 2)), k=3)


# The digits feature network.


def test_classifier_test_accuracy(classifier, digits_test):
  assert classifier.info["test_accuracy"] >= 0.97
  measured = np.mean(classifier.predict(digits_test["image"]) == digits_test["label"])
  assert measured == pytest.approx(classifier.info["test_accuracy"])


def test_features_shape_and_input_forms(classifier, digits_test):
  images = digits_test["image"][:50]
  feats = classifier.features(images)
  assert feats.shape == (50, classifier_lib.FEATURES) and feats.dtype == np.float32
  np.testing.assert_allclose(classifier.features(images.astype(np.float32) / 255.0), feats, atol=1e-5)
  # More images than one chunk go through the same program, chunk by chunk.
  many = np.concatenate([digits_test["image"]] * 4)  # (1200, 8, 8, 1)
  np.testing.assert_allclose(classifier.features(many)[-50:], classifier.features(digits_test["image"][-50:]),
                             atol=1e-5)
  with pytest.raises(ValueError, match=r"\(N, 8, 8, 1\)"):
    classifier.features(images[..., 0])


def test_cache_is_reused(classifier_root, classifier, digits_test):
  def refuse(workdir):
    raise AssertionError(f"retrained into {workdir}")

  mlp = classifier_tasks.DIGITS_NETWORKS["mlp"]
  assert classifier_tasks.digits_classifier(classifier_root) is classifier
  # Skips the in-process memo: read from disk, never trained.
  from_disk = classifier_tasks._cached.__wrapped__(os.path.abspath(classifier_root), mlp._replace(fit=refuse))
  np.testing.assert_array_equal(from_disk.features(digits_test["image"]), classifier.features(digits_test["image"]))
  assert from_disk.info == classifier.info and from_disk.name == classifier.name == classifier_tasks.VERSION
  assert sorted(os.listdir(os.path.join(classifier_root, classifier_tasks.VERSION))) == ["classifier.json", "params"]


def test_two_callers_train_once(classifier, tmp_path):
  calls = []

  def fake_fit(workdir):
    calls.append(workdir)
    time.sleep(0.5)  # long enough for the other caller to reach the lock
    return classifier.params, dict(classifier.info)

  network = classifier_tasks.DIGITS_NETWORKS["mlp"]._replace(fit=fake_fit)
  root = str(tmp_path / "cache")
  os.makedirs(os.path.join(root, f".{classifier_tasks.VERSION}.tmp-killed"))  # left by a killed process
  got = []
  threads = [threading.Thread(target=lambda: got.append(classifier_tasks._cached.__wrapped__(root, network)))
             for _ in range(2)]
  for t in threads:
    t.start()
  for t in threads:
    t.join()
  assert len(calls) == 1 and len(got) == 2
  assert all(c.info["test_accuracy"] == classifier.info["test_accuracy"] for c in got)
  assert not glob.glob(os.path.join(root, ".*.tmp-*"))


def test_failed_training_leaves_no_cache(tmp_path):
  def broken_fit(workdir):
    os.makedirs(workdir)
    raise RuntimeError("killed")

  root = str(tmp_path / "cache")
  with pytest.raises(RuntimeError, match="killed"):
    classifier_tasks.cached_space(classifier_tasks.DIGITS_NETWORKS["mlp"]._replace(fit=broken_fit), root)
  assert not os.path.exists(os.path.join(root, classifier_tasks.VERSION))
  assert not glob.glob(os.path.join(root, ".*.tmp-*"))


# Digits FID and class shares.


def test_digits_fid_scale(classifier, digits_test, digits_train):
  digits_fid = classifier_tasks.digits_fid
  real = digits_fid(digits_test["image"], "train", classifier)
  bad = digits_fid(fid.independent_pixel_samples(digits_train["image"], 1000), "train", classifier)
  assert 0.0 < real < 10.0
  assert bad > 5 * real
  as_floats = digits_test["image"].astype(np.float32) / 255.0
  assert digits_fid(as_floats, "train", classifier) == pytest.approx(real, rel=1e-4)
  assert digits_fid(digits_test["image"], "test", classifier) == pytest.approx(0.0, abs=1e-6)
  with pytest.raises(ValueError, match="reference"):
    digits_fid(digits_test["image"], "validation", classifier)
  scale = classifier_tasks.digits_reference_fids(classifier)
  assert scale["test_split"] == real and scale["independent_pixels"] == bad
  assert scale["test_accuracy"] == classifier.info["test_accuracy"]


def test_digits_precision_recall(classifier, digits_test, digits_train):
  real = classifier_tasks.digits_reference("train", classifier).features
  test_precision, test_recall = fid.precision_recall(real, classifier.features(digits_test["image"]))
  bad = fid.independent_pixel_samples(digits_train["image"], 300)
  bad_precision, _ = fid.precision_recall(real, classifier.features(bad))
  assert test_precision > 0.8 and test_recall > 0.5
  assert bad_precision < test_precision


def test_independent_pixel_samples_match_marginals(digits_train):
  samples = fid.independent_pixel_samples(digits_train["image"], 3000)
  assert samples.shape == (3000, 8, 8, 1) and samples.dtype == np.uint8
  np.testing.assert_allclose(samples.mean(0), digits_train["image"].mean(0), atol=8.0)  # of 0..255
  np.testing.assert_array_equal(samples, fid.independent_pixel_samples(digits_train["image"], 3000))  # seeded


def test_class_shares(classifier, digits_test):
  shares = fid.class_shares(digits_test["image"], classifier)
  assert shares.shape == (10,) and shares.sum() == pytest.approx(1.0)
  np.testing.assert_allclose(shares, np.bincount(digits_test["label"], minlength=10) / 300, atol=0.02)
  zeros = digits_test["image"][digits_test["label"] == 0]  # a model that dropped every other mode
  assert fid.class_shares(zeros, classifier)[0] >= 0.95


def test_sample_metrics_equal_their_parts(classifier, digits_test):
  images = digits_test["image"]
  zeros = images[digits_test["label"] == 0]
  ref = classifier_tasks.digits_reference("train", classifier)
  assert classifier_tasks.digits_reference("train", classifier) is ref  # computed once per space and split
  assert (ref.space, ref.name) == (classifier.name, "digits/train")
  metrics = fid.sample_metrics(images, classifier, ref)
  real, feats = ref.features, classifier.features(images)
  assert metrics["fid"] == fid.frechet_distance(real, feats)
  assert metrics["fid"] == pytest.approx(classifier_tasks.digits_fid(images, "train", classifier))
  assert (metrics["kid"], metrics["kid_se"]) == fid.kernel_distance(real, feats)
  assert (metrics["precision"], metrics["recall"]) == fid.precision_recall(real, feats)
  np.testing.assert_allclose(metrics["class_shares"], fid.class_shares(images, classifier), atol=5e-5)
  assert metrics["classes_covered"] == 10 and metrics["num_samples"] == metrics["num_scored"] == 300
  assert _scalars(metrics) == sorted(fid.sample_metric_names(classes=True, held_out=False))
  test_ref = classifier_tasks.digits_reference("test", classifier)
  assert _scalars(fid.sample_metrics(images, classifier, ref, test_ref, "p_")) == \
      sorted(fid.sample_metric_names("p_", classes=True))
  assert metrics["confidence"] > 0.9
  # A model that dropped every other digit covers one class, and its FID is far worse.
  dropped = fid.sample_metrics(zeros, classifier, ref)
  assert dropped["classes_covered"] == 1 and dropped["fid"] > 5 * metrics["fid"]
  assert dropped["recall"] < metrics["recall"]
  # A diverged model's samples score NaN instead of raising.
  broken = fid.sample_metrics(np.full((8, 8, 8, 1), np.nan, np.float32), classifier, ref)
  assert np.isnan(broken["fid"]) and broken["classes_covered"] == 0 and broken["num_samples"] == 8


# Any feature space.


def _scalars(metrics: dict) -> list[str]:
  return sorted(k for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool))


def _pixel_space(name="pixels"):
  """A feature network without a class head: the pixels themselves, scaled by 10."""
  return FeatureSpace(name, lambda params, x: (None, params * x.reshape(x.shape[0], -1)), np.float32(10.0),
                      (4, 4, 1))


def test_a_feature_space_without_classes():
  rng = np.random.default_rng(0)
  real = rng.uniform(size=(200, 4, 4, 1)).astype(np.float32)
  fake = np.clip(real[:100] + 0.3, 0.0, 1.0)
  space = _pixel_space()
  assert space.num_features == 16 and space.num_classes == 0
  np.testing.assert_allclose(space.features(real), 10.0 * real.reshape(200, -1), rtol=1e-6)
  ref = fid.reference(space, real, "uniform")
  np.testing.assert_allclose(ref.mean, 10.0 * real.reshape(200, -1).mean(0), rtol=1e-5)
  metrics = fid.sample_metrics(fake, space, ref)
  assert sorted(metrics) == ["fid", "kid", "kid_se", "num_samples", "num_scored", "precision", "recall"]
  assert sorted(metrics) == sorted(fid.sample_metric_names(held_out=False))
  assert _scalars(fid.sample_metrics(fake, space, ref, fid.reference(space, real[100:], "held out"))) == \
      sorted(fid.sample_metric_names())
  assert metrics["fid"] == pytest.approx(fid.frechet_distance(ref.features, space.features(fake)))
  assert fid.sample_metrics(real, space, ref)["fid"] < metrics["fid"]
  assert space.features(real[:0]).shape == (0, 16)
  with pytest.raises(ValueError, match="no class head"):
    space.predict(real)
  with pytest.raises(ValueError, match=r"\(N, 4, 4, 1\)"):
    space.features(real[..., 0])


def test_a_reference_from_another_space_is_refused():
  real = np.random.default_rng(0).uniform(size=(20, 4, 4, 1)).astype(np.float32)
  ref = fid.reference(_pixel_space("pixels_v1"), real, "uniform")
  with pytest.raises(ValueError, match="pixels_v1 feature space, not in pixels_v2"):
    fid.sample_metrics(real, _pixel_space("pixels_v2"), ref)


# KID.


def direct_kid(x, y):
  """Unbiased MMD^2 with the cubic kernel, written out as its sums over pairs."""
  d = x.shape[1]
  k = lambda a, b: (np.dot(a, b) / d + 1.0) ** 3
  m, n = len(x), len(y)
  xx = sum(k(x[i], x[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
  yy = sum(k(y[i], y[j]) for i in range(n) for j in range(n) if i != j) / (n * (n - 1))
  xy = sum(k(x[i], y[j]) for i in range(m) for j in range(n)) / (m * n)
  return xx + yy - 2 * xy


def direct_jackknife_se(x, y):
  """The two-sample delete-one jackknife, every estimate recomputed on the smaller sets."""
  variance = 0.0
  for data, other, first in ((x, y, True), (y, x, False)):
    size = len(data)
    left_out = np.array([direct_kid(np.delete(data, a, 0), other) if first else direct_kid(other, np.delete(data, a, 0))
                         for a in range(size)])
    variance += (size - 1) / size * np.sum((left_out - left_out.mean()) ** 2)
  return np.sqrt(variance)


@pytest.mark.parametrize("m,n,d,seed", [(9, 12, 3, 0), (14, 7, 5, 1)])
def test_kid_matches_direct_sums(m, n, d, seed):
  rng = np.random.default_rng(seed)
  x = rng.normal(size=(m, d))
  y = rng.normal(size=(n, d)) * 1.3 + 0.4
  estimate, se = fid.kernel_distance(x, y)
  np.testing.assert_allclose(estimate, direct_kid(x, y), rtol=1e-10)
  np.testing.assert_allclose(se, direct_jackknife_se(x, y), rtol=1e-8)


def test_kid_is_unbiased_and_its_se_is_calibrated():
  # Two draws of one distribution: the estimates centre on 0 (FID's would all be positive), and the
  # jackknife is conservative there (a degenerate U-statistic) but never too small.
  rng = np.random.default_rng(3)
  same = np.array([fid.kernel_distance(rng.normal(size=(60, 4)), rng.normal(size=(80, 4))) for _ in range(300)])
  assert abs(same[:, 0].mean()) < 3 * same[:, 0].std() / np.sqrt(len(same))
  assert np.mean(same[:, 0] < 0) > 0.3
  assert 1.0 < np.mean(same[:, 1]) / same[:, 0].std() < 1.8
  # Two distributions apart: the jackknife standard error matches the spread over independent draws.
  apart = np.array([fid.kernel_distance(rng.normal(size=(60, 4)), rng.normal(size=(80, 4)) + 0.4)
                    for _ in range(300)])
  assert 0.85 < np.mean(apart[:, 1]) / apart[:, 0].std() < 1.2
  assert np.all(apart[:, 0] > 0) or np.mean(apart[:, 0] > 2 * apart[:, 1]) > 0.5


def test_kid_rejects_bad_input():
  with pytest.raises(ValueError, match="at least 3 rows"):
    fid.kernel_distance(np.zeros((2, 4)), np.zeros((5, 4)))
  with pytest.raises(ValueError, match=r"\(m, D\) and \(n, D\)"):
    fid.kernel_distance(np.zeros((5, 4)), np.zeros((5, 3)))



# Scores beside real held-out images, at one count.


def test_samples_and_held_out_images_are_scored_at_one_count(classifier, digits_test, digits_train):
  ref = classifier_tasks.digits_reference("train", classifier)
  held_out = classifier_tasks.digits_reference("test", classifier)
  bad = fid.independent_pixel_samples(digits_train["image"], 1000)
  metrics = fid.sample_metrics(bad, classifier, ref, held_out, prefix="x_")
  assert metrics["num_samples"] == 1000 and metrics["num_scored"] == 300  # the 300 held-out digits set the count
  alone = fid.sample_metrics(bad[:300], classifier, ref)
  for name in ("fid", "kid", "kid_se", "precision", "recall"):
    assert metrics["x_" + name] == alone[name]
  real = fid.sample_metrics(digits_test["image"], classifier, ref)
  for name in ("fid", "kid", "precision", "recall"):
    assert metrics[f"x_{name}_real"] == real[name]
  assert metrics["x_fid_ratio"] == pytest.approx(alone["fid"] / real["fid"])
  assert metrics["x_confidence_real"] == real["confidence"] > metrics["x_confidence"]
  np.testing.assert_allclose(metrics["x_class_shares"], fid.class_shares(bad, classifier), atol=5e-5)
  # Fewer samples than held-out images: the first len(samples) of the held-out set are the real side.
  few = fid.sample_metrics(bad[:50], classifier, ref, held_out)
  assert few["num_scored"] == 50
  assert few["fid_real"] == fid.sample_metrics(digits_test["image"][:50], classifier, ref)["fid"]
  with pytest.raises(ValueError, match="feature space"):
    fid.sample_metrics(bad, classifier, ref, fid.reference(_pixel_space(), np.zeros((4, 4, 4, 1)), "zeros"))


def test_known_cases_are_ordered_in_both_spaces(tmp_path):
  # What the experiments report, at their sample count (1000 samples, scored at 300 beside the held-out
  # digits): real digits, the same with pixel noise 0.05 and 0.1, a Gaussian mixture fitted to the
  # pixels, independent pixels; through the table that reports them, with the experiments' cached networks.
  from experiments.tables import sample_metrics  # pylint: disable=import-outside-toplevel
  config = sample_metrics.get_config()
  config.seed = 1  # the committed table uses seed 0
  cases = sample_metrics.run(config, str(tmp_path))["cases"]
  assert list(cases) == list(classifier_tasks.KNOWN_CASES)
  table = (tmp_path / "sample_metrics.md").read_text()
  assert "digits_cnn_v1" in table and "| gaussian mixture |" in table
  real, noise_05, noise_10, mixture, independent = classifier_tasks.KNOWN_CASES
  for prefix in ("", "cnn_"):
    for metric in ("fid", "kid"):
      score = lambda case: cases[case][prefix + metric]  # pylint: disable=cell-var-from-loop
      assert max(score(real), score(noise_05), score(noise_10)) < score(mixture) < score(independent) or \
          (prefix, metric) == ("cnn_", "kid"), (prefix, metric)
      assert max(score(real), score(noise_05), score(noise_10)) < min(score(mixture), score(independent))
  # The conv net's features see pixel noise: both scores rise with it. (The MLP's average it away: at 300
  # images its FID and KID cannot tell noise of 0.05 from the real digits.)
  for metric in ("cnn_fid", "cnn_kid"):
    assert cases[real][metric] < cases[noise_05][metric] < cases[noise_10][metric], metric
  assert cases[real]["fid_ratio"] == pytest.approx(1.0, abs=1e-5) and cases[real]["cnn_fid_ratio"] == pytest.approx(1.0, abs=1e-5)
  assert cases[noise_10]["cnn_fid_ratio"] > 1.2 and cases[mixture]["cnn_fid_ratio"] > 3.0
