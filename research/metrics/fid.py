"""Measuring samples in a feature space: FID, precision/recall, class shares, against real images' statistics.

    ref = fid.reference(space, real_images, "digits/train")   # real images seen through the space
    fid.sample_metrics(samples, space, ref)                   # what a generative run reports
    fid.frechet_distance(feats_a, feats_b)                    # any features
    fid.precision_recall(ref.features, space.features(samples))
    fid.class_shares(samples, space)                          # share of each predicted class

A feature space (research/metrics/features.py) is a network that maps images to features
(and, for a classifier, class logits); a dataset brings its own. The digits' is a small
classifier trained by the loop once and cached (research/tasks/classifier.py: `digits_classifier`,
`digits_reference`). A Reference holds real images' features in one space and their Gaussian
fit, computed once and compared with any number of sample sets.

The Fréchet distance between Gaussian fits N(mu1, S1), N(mu2, S2) of two feature sets
(Heusel et al., 2017) is

    d^2 = |mu1 - mu2|^2 + Tr(S1 + S2 - 2 (S1 S2)^(1/2)).

S1 S2 is not symmetric, and a general matrix square root of it (scipy.linalg.sqrtm) can
return complex values or lose accuracy when the covariances are singular, as they are for
fewer samples than features. Its eigenvalues are those of the symmetric PSD matrix
S1^(1/2) S2 S1^(1/2), so (1) S1^(1/2) comes from an eigendecomposition of S1, and (2) the
trace is the sum of the square roots of the eigenvalues of S1^(1/2) S2 S1^(1/2), all in
float64, with round-off below zero clipped.

Scale on digits against the training split (feature network digits_mlp_v1, measured by
`research.tasks.classifier.digits_reference_fids()`):
    the real test split (300 held-out images):                          2.08
    1000 images whose pixels are drawn independently from each
    pixel's training marginal (a bad model):                           36.0
FID is biased upwards for few samples: compare models at the same sample count.

Precision and recall (Kynkäänniemi et al., 2019): each real feature's ball reaches its
k-th nearest real neighbour (k = 3); precision is the fraction of generated samples inside
some real ball, recall the fraction of real samples inside some generated ball (the balls
of the generated set, built the same way).
"""

from typing import NamedTuple

import numpy as np

from research.metrics.features import FeatureSpace

__all__ = ["Reference", "class_shares", "frechet_distance", "frechet_distance_from_stats",
     "frechet_difference_se", "frechet_distance_se", "gaussian_fit", "independent_pixel_samples",
     "precision_recall", "reference", "sample_metrics"]

# A class counts as covered when at least this share of the samples is predicted as it (a tenth of
# its 10% share among balanced digits).
COVERED_SHARE = 0.02
# Rows of the pairwise-distance matrix computed at once: bounds memory at ROWS x N float64.
ROWS = 1024


def _features_2d(feats, name: str) -> np.ndarray:
  feats = np.asarray(feats, np.float64)
  if feats.ndim != 2:
    raise ValueError(f"{name} must be (N, features), got shape {feats.shape}")
  if feats.shape[0] < 2:
    raise ValueError(f"{name} needs at least 2 rows to fit a covariance, got {feats.shape[0]}")
  return feats


def gaussian_fit(feats) -> tuple[np.ndarray, np.ndarray]:
  """Mean and (unbiased, N - 1) covariance of features, as FID's reference code fits them.

  Args:
    feats: (N, D) features, N >= 2.

  Returns:
    (mean (D,), covariance (D, D)), float64.
  """
  feats = _features_2d(feats, "feats")
  return feats.mean(0), np.cov(feats, rowvar=False)


class Reference(NamedTuple):
  """Real images seen through one feature space: what samples are scored against.

  Attributes:
    space: the name of the FeatureSpace the features come from.
    name: which real images, e.g. "digits/train".
    features: (N, F) their features.
    mean: (F,) float64, the mean of the Gaussian fit (`gaussian_fit`).
    covariance: (F, F) float64, its covariance.
  """

  space: str
  name: str
  features: np.ndarray
  mean: np.ndarray
  covariance: np.ndarray


def reference(space: FeatureSpace, images, name: str) -> Reference:
  """The Reference of real images in `space`.

  Args:
    space: the feature network.
    images: (N, H, W, C) real images as the space reads them (uint8, or float in [0, 1]), N >= 2.
    name: names the images (a dataset and split), for messages and tables.

  Returns:
    Their features and Gaussian fit.
  """
  feats = space.features(images)
  return Reference(space.name, name, feats, *gaussian_fit(feats))


def _check_space(space: FeatureSpace, ref: Reference) -> None:
  if ref.space != space.name:
    raise ValueError(f"the reference {ref.name!r} was measured in the {ref.space} feature space, not in {space.name}")


def _psd_sqrt(matrix: np.ndarray) -> np.ndarray:
  """The symmetric square root of a symmetric PSD matrix (negative round-off eigenvalues -> 0)."""
  eigenvalues, eigenvectors = np.linalg.eigh((matrix + matrix.T) / 2)
  return (eigenvectors * np.sqrt(np.clip(eigenvalues, 0.0, None))) @ eigenvectors.T


def frechet_distance_from_stats(mu1, sigma1, mu2, sigma2) -> float:
  """Squared Fréchet distance between N(mu1, sigma1) and N(mu2, sigma2).

  Args:
    mu1: (D,) mean of the first Gaussian.
    sigma1: (D, D) its covariance (symmetric PSD).
    mu2: (D,) mean of the second Gaussian.
    sigma2: (D, D) its covariance.

  Returns:
    |mu1 - mu2|^2 + Tr(sigma1 + sigma2 - 2 (sigma1 sigma2)^(1/2)), clipped at 0 (round-off).
  """
  mu1, mu2 = np.asarray(mu1, np.float64), np.asarray(mu2, np.float64)
  sigma1, sigma2 = np.asarray(sigma1, np.float64), np.asarray(sigma2, np.float64)
  if mu1.shape != mu2.shape or sigma1.shape != sigma2.shape or sigma1.shape != mu1.shape * 2:
    raise ValueError(f"mismatched statistics: means {mu1.shape} and {mu2.shape}, "
                     f"covariances {sigma1.shape} and {sigma2.shape}")
  root1 = _psd_sqrt(sigma1)  # (D, D)
  inner = root1 @ sigma2 @ root1  # (D, D), symmetric PSD, same eigenvalues as sigma1 sigma2
  eigenvalues = np.linalg.eigvalsh((inner + inner.T) / 2)  # (D,)
  trace_sqrt = np.sum(np.sqrt(np.clip(eigenvalues, 0.0, None)))
  distance = np.sum(np.square(mu1 - mu2)) + np.trace(sigma1) + np.trace(sigma2) - 2.0 * trace_sqrt
  return float(max(distance, 0.0))


def frechet_distance(feats_a, feats_b) -> float:
  """Squared Fréchet distance between Gaussian fits of two feature sets (FID on given features).

  Args:
    feats_a: (N, D) features, N >= 2.
    feats_b: (M, D) features, M >= 2.

  Returns:
    The distance d^2 as a float (what papers report as FID).
  """
  return frechet_distance_from_stats(*gaussian_fit(feats_a), *gaussian_fit(feats_b))


def _bootstrap_distances(real_feats, fakes: list, num_resamples: int, seed: int) -> np.ndarray:
  """(num_resamples, len(fakes)) distances to the real fit, every set resampled with the same rows."""
  fakes = [_features_2d(f, name) for f, name in zip(fakes, ("fake_feats", "fake_b"))]
  if len({f.shape for f in fakes}) != 1:
    raise ValueError(f"paired features must have one shape, got {' and '.join(str(f.shape) for f in fakes)}")
  if num_resamples < 2:
    raise ValueError(f"num_resamples must be at least 2, got {num_resamples}")
  mu_real, sigma_real = gaussian_fit(real_feats)
  rng = np.random.default_rng(seed)
  out = np.empty((num_resamples, len(fakes)))
  for i in range(num_resamples):
    rows = rng.integers(0, len(fakes[0]), len(fakes[0]))
    out[i] = [frechet_distance_from_stats(mu_real, sigma_real, *gaussian_fit(f[rows])) for f in fakes]
  return out


def frechet_distance_se(real_feats, fake_feats, num_resamples: int = 50, seed: int = 0) -> float:
  """Bootstrap standard error of `frechet_distance(real_feats, fake_feats)` over the generated samples.

  The generated features are resampled with replacement `num_resamples` times (the real set is
  held fixed: it is the same for every row of a table), and the standard deviation of the
  resampled distances is returned. It measures how much a score moves with the draw of samples,
  so two cells closer than a couple of standard errors are not ordered by their scores.

  Args:
    real_feats: (N, D) reference features.
    fake_feats: (M, D) generated features, M >= 2.
    num_resamples: bootstrap resamples (>= 2).
    seed: seeds the resampling.

  Returns:
    The standard error as a float.
  """
  return float(np.std(_bootstrap_distances(real_feats, [fake_feats], num_resamples, seed)[:, 0], ddof=1))


def frechet_difference_se(real_feats, fake_a, fake_b, num_resamples: int = 50, seed: int = 0) -> float:
  """Paired bootstrap standard error of FID(real, fake_a) − FID(real, fake_b).

  Row i of `fake_a` and of `fake_b` are paired (made from the same starting noise, say), so both
  sets are resampled with the same indices. For samplers compared from shared noise this is
  smaller than the two unpaired standard errors combined (about half in the DDIM table), because
  the draw of starting points moves both scores alike.

  Args:
    real_feats: (N, D) reference features.
    fake_a: (M, D) generated features.
    fake_b: (M, D) generated features, row i paired with row i of fake_a.
    num_resamples: bootstrap resamples (>= 2).
    seed: seeds the resampling.

  Returns:
    The standard error of the difference as a float.
  """
  distances = _bootstrap_distances(real_feats, [fake_a, fake_b], num_resamples, seed)
  return float(np.std(distances[:, 0] - distances[:, 1], ddof=1))


def _sq_distances(a: np.ndarray, b: np.ndarray) -> np.ndarray:
  """(len(a), len(b)) squared Euclidean distances, float64, clipped at 0."""
  out = np.sum(a * a, 1)[:, None] + np.sum(b * b, 1)[None, :] - 2.0 * a @ b.T
  return np.maximum(out, 0.0)


def _knn_radii_sq(feats: np.ndarray, k: int) -> np.ndarray:
  """Squared distance from each row to its k-th nearest other row."""
  radii = np.empty(len(feats))
  for start in range(0, len(feats), ROWS):
    d = _sq_distances(feats[start:start + ROWS], feats)  # (rows, N)
    # Column k of the sorted row: column 0 is the point itself (distance 0).
    radii[start:start + ROWS] = np.partition(d, k, axis=1)[:, k]
  return radii


def _coverage(points: np.ndarray, centres: np.ndarray, radii_sq: np.ndarray) -> float:
  """Fraction of `points` inside at least one ball (centre, radius)."""
  inside = np.zeros(len(points), bool)
  for start in range(0, len(points), ROWS):
    d = _sq_distances(points[start:start + ROWS], centres)  # (rows, M)
    inside[start:start + ROWS] = np.any(d <= radii_sq[None, :], 1)
  return float(np.mean(inside))


def precision_recall(real_feats, fake_feats, k: int = 3) -> tuple[float, float]:
  """Improved precision and recall (Kynkäänniemi et al., 2019) of generated features.

  Args:
    real_feats: (N, D) features of real samples, N > k.
    fake_feats: (M, D) features of generated samples, M > k.
    k: each sample's ball reaches its k-th nearest neighbour within its own set.

  Returns:
    (precision, recall): the fraction of generated samples inside the real manifold
    (quality) and of real samples inside the generated manifold (coverage).
  """
  real = np.asarray(real_feats, np.float64)
  fake = np.asarray(fake_feats, np.float64)
  if real.ndim != 2 or fake.ndim != 2 or real.shape[1] != fake.shape[1]:
    raise ValueError(f"expected (N, D) and (M, D) features, got {real.shape} and {fake.shape}")
  if k < 1 or min(len(real), len(fake)) <= k:
    raise ValueError(f"k must be in 1..{min(len(real), len(fake)) - 1} for these sets, got {k}")
  precision = _coverage(fake, real, _knn_radii_sq(real, k))
  recall = _coverage(real, fake, _knn_radii_sq(fake, k))
  return precision, recall


def class_shares(images, space: FeatureSpace) -> np.ndarray:
  """The share of samples a classifier's feature space assigns to each class (mode dropping shows as zeros).

  Args:
    images: (N, H, W, C) float in [0, 1] or uint8.
    space: a feature network with a class head.

  Returns:
    (num_classes,) float64 shares summing to 1.
  """
  predicted = space.predict(images)
  return np.bincount(predicted, minlength=space.num_classes).astype(np.float64) / max(len(predicted), 1)


def sample_metrics(images, space: FeatureSpace, ref: Reference) -> dict:
  """What a generative run reports about its samples (results.json's sample metrics), in one feature space.

  Args:
    images: (N, H, W, C) samples, float in [0, 1] or uint8; N >= 4.
    space: the feature network.
    ref: real images' statistics in `space` (`reference`).

  Returns:
    {"fid": against the reference, "precision", "recall" (k = 3), and for a space with a class
    head "classes_covered": classes with a share >= COVERED_SHARE, "class_shares": the shares,
    rounded to 4 places; "num_samples": N}. Samples with a NaN or infinite pixel (a diverged
    model) score NaN and cover no class, rather than failing the run that reports them.

  Raises:
    ValueError: for a reference measured in another space.
  """
  _check_space(space, ref)
  images = np.asarray(images)
  if np.issubdtype(images.dtype, np.floating) and not np.all(np.isfinite(images)):
    nan = float("nan")
    out = {"fid": nan, "precision": nan, "recall": nan}
    if space.num_classes:
      out.update(classes_covered=0, class_shares=[nan] * space.num_classes)
    return {**out, "num_samples": int(len(images))}
  feats = space.features(images)
  precision, recall = precision_recall(ref.features, feats)
  out = {"fid": frechet_distance_from_stats(ref.mean, ref.covariance, *gaussian_fit(feats)), "precision": precision,
         "recall": recall}
  if space.num_classes:
    shares = class_shares(images, space)
    out.update(classes_covered=int(np.sum(shares >= COVERED_SHARE)), class_shares=shares.round(4).tolist())
  return {**out, "num_samples": int(len(feats))}


def independent_pixel_samples(images, n: int, seed: int = 0) -> np.ndarray:
  """Images whose pixels are drawn independently from each pixel's marginal in `images`.

  A bad model with the right per-pixel statistics and none of the structure: the far end of
  a feature space's scale.

  Args:
    images: (N, H, W, C) real images (e.g. a training split).
    n: number of images.
    seed: seeds the draw.

  Returns:
    (n, H, W, C) of the images' dtype.
  """
  images = np.asarray(images)
  rng = np.random.default_rng(seed)
  source = rng.integers(0, len(images), size=(n, *images.shape[1:]))  # (n, H, W, C): a real image per pixel
  _, row, col, channel = np.indices(source.shape)
  return images[source, row, col, channel]
