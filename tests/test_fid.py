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


def test_cache_is_reused(classifier_root, classifier, digits_test, monkeypatch):
  def refuse(workdir):
    raise AssertionError(f"retrained into {workdir}")

  monkeypatch.setattr(classifier_tasks, "_fit", refuse)
  assert classifier_tasks.digits_classifier(classifier_root) is classifier
  from_disk = classifier_tasks._cached.__wrapped__(os.path.abspath(classifier_root))  # skips the in-process memo
  np.testing.assert_array_equal(from_disk.features(digits_test["image"]), classifier.features(digits_test["image"]))
  assert from_disk.info == classifier.info and from_disk.name == classifier.name == classifier_tasks.VERSION
  assert sorted(os.listdir(os.path.join(classifier_root, classifier_tasks.VERSION))) == ["classifier.json", "params"]


def test_two_callers_train_once(classifier, tmp_path, monkeypatch):
  calls = []

  def fake_fit(workdir):
    calls.append(workdir)
    time.sleep(0.5)  # long enough for the other caller to reach the lock
    return classifier.params, dict(classifier.info)

  monkeypatch.setattr(classifier_tasks, "_fit", fake_fit)
  root = str(tmp_path / "cache")
  os.makedirs(os.path.join(root, f".{classifier_tasks.VERSION}.tmp-killed"))  # left by a killed process
  got = []
  threads = [threading.Thread(target=lambda: got.append(classifier_tasks._cached.__wrapped__(root))) for _ in range(2)]
  for t in threads:
    t.start()
  for t in threads:
    t.join()
  assert len(calls) == 1 and len(got) == 2
  assert all(c.info["test_accuracy"] == classifier.info["test_accuracy"] for c in got)
  assert not glob.glob(os.path.join(root, ".*.tmp-*"))


def test_failed_training_leaves_no_cache(tmp_path, monkeypatch):
  def broken_fit(workdir):
    os.makedirs(workdir)
    raise RuntimeError("killed")

  monkeypatch.setattr(classifier_tasks, "_fit", broken_fit)
  root = str(tmp_path / "cache")
  with pytest.raises(RuntimeError, match="killed"):
    classifier_tasks.digits_classifier(root)
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
  assert classifier_tasks.digits_sample_metrics(images, classifier) == metrics
  real, feats = ref.features, classifier.features(images)
  assert metrics["fid"] == fid.frechet_distance(real, feats)
  assert metrics["fid"] == pytest.approx(classifier_tasks.digits_fid(images, "train", classifier))
  assert (metrics["precision"], metrics["recall"]) == fid.precision_recall(real, feats)
  np.testing.assert_allclose(metrics["class_shares"], fid.class_shares(images, classifier), atol=5e-5)
  assert metrics["classes_covered"] == 10 and metrics["num_samples"] == 300
  # A model that dropped every other digit covers one class, and its FID is far worse.
  dropped = fid.sample_metrics(zeros, classifier, ref)
  assert dropped["classes_covered"] == 1 and dropped["fid"] > 5 * metrics["fid"]
  assert dropped["recall"] < metrics["recall"]
  # A diverged model's samples score NaN instead of raising.
  broken = fid.sample_metrics(np.full((8, 8, 8, 1), np.nan, np.float32), classifier, ref)
  assert np.isnan(broken["fid"]) and broken["classes_covered"] == 0 and broken["num_samples"] == 8


# Any feature space.


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
  assert sorted(metrics) == ["fid", "num_samples", "precision", "recall"]
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
