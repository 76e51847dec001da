"""Measuring samples in a feature space: FID, precision/recall, class shares, against real images' statistics.

    ref = fid.reference(space, real_images, "digits/train")   # real images seen through the space
    held_out = fid.reference(space, test_images, "digits/test")
    fid.sample_metrics(samples, space, ref, held_out)         # what a generative run reports, beside real data
    fid.kernel_distance(feats_a, feats_b)                     # KID and its standard error
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
     "gaussian_mixture_samples", "kernel_distance", "precision_recall", "reference", "sample_metrics"]

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
    logits: (N, classes) class logits of a space with a class head, else None.
  """

  space: str
  name: str
  features: np.ndarray
  mean: np.ndarray
  covariance: np.ndarray
  logits: np.ndarray | None = None


def reference(space: FeatureSpace, images, name: str) -> Reference:
  """The Reference of real images in `space`.

  Args:
    space: the feature network.
    images: (N, H, W, C) real images as the space reads them (uint8, or float in [0, 1]), N >= 2.
    name: names the images (a dataset and split), for messages and tables.

  Returns:
    Their features and Gaussian fit.
  """
  logits, feats = space.outputs(images)
  return Reference(space.name, name, feats, *gaussian_fit(feats), logits)


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


def _cubic_kernel(a: np.ndarray, b: np.ndarray) -> np.ndarray:
  """KID's kernel k(x, y) = (x . y / D + 1)^3 between the rows of a and b, (len(a), len(b)) float64."""
  return (a @ b.T / a.shape[1] + 1.0) ** 3


def kernel_distance(real_feats, fake_feats) -> tuple[float, float]:
  """KID (Bińkowski et al., 2018): the unbiased squared MMD with the cubic polynomial kernel, and its standard error.

  With k(x, y) = (x . y / D + 1)^3, m real rows x and n generated rows y,

      MMD^2_u = sum_{i != j} k(x_i, x_j) / (m (m - 1)) + sum_{i != j} k(y_i, y_j) / (n (n - 1))
                - 2 sum_{i, j} k(x_i, y_j) / (m n),

  an unbiased estimate of the population MMD^2: unlike FID it does not grow as the sample
  count falls, so it can be negative for two draws of one distribution. The standard error is
  the two-sample delete-one jackknife: every row of either set left out in turn (each
  leave-one-out estimate from the kernel matrices' row sums), var = (m - 1)/m sum_a
  (theta_-a - mean)^2 over the real rows plus the same over the generated rows.

  Args:
    real_feats: (m, D) features, m >= 3.
    fake_feats: (n, D) features, n >= 3.

  Returns:
    (MMD^2_u, its standard error), floats.
  """
  x = np.asarray(real_feats, np.float64)
  y = np.asarray(fake_feats, np.float64)
  if x.ndim != 2 or y.ndim != 2 or x.shape[1] != y.shape[1]:
    raise ValueError(f"expected (m, D) and (n, D) features, got {x.shape} and {y.shape}")
  m, n = len(x), len(y)
  if min(m, n) < 3:
    raise ValueError(f"KID's standard error needs at least 3 rows on each side, got {m} and {n}")
  kxx, kyy, kxy = _cubic_kernel(x, x), _cubic_kernel(y, y), _cubic_kernel(x, y)
  rxx = kxx.sum(1) - np.diag(kxx)  # (m,) each real row's kernel sum over the other real rows
  ryy = kyy.sum(1) - np.diag(kyy)  # (n,)
  cx, cy = kxy.sum(1), kxy.sum(0)  # (m,), (n,) cross sums per real / generated row
  sxx, syy, sxy = rxx.sum(), ryy.sum(), cx.sum()
  estimate = sxx / (m * (m - 1)) + syy / (n * (n - 1)) - 2.0 * sxy / (m * n)
  # Leaving real row a out removes its row and column of Kxx (2 r_a of the off-diagonal sum) and its row of Kxy.
  without_x = (sxx - 2 * rxx) / ((m - 1) * (m - 2)) + syy / (n * (n - 1)) - 2.0 * (sxy - cx) / ((m - 1) * n)
  without_y = sxx / (m * (m - 1)) + (syy - 2 * ryy) / ((n - 1) * (n - 2)) - 2.0 * (sxy - cy) / (m * (n - 1))
  variance = (m - 1) / m * np.sum(np.square(without_x - without_x.mean())) \
      + (n - 1) / n * np.sum(np.square(without_y - without_y.mean()))
  return float(estimate), float(np.sqrt(variance))


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


def _confidence(logits: np.ndarray) -> float:
  """The mean largest class probability of (N, classes) logits: how sure a classifier is of what images show."""
  logits = logits - logits.max(-1, keepdims=True)
  return float(np.mean(np.exp(logits).max(-1) / np.exp(logits).sum(-1)))


SCORES = ("fid", "kid", "kid_se", "precision", "recall")  # `_scores`' keys


def sample_metric_names(prefix: str = "", classes: bool = False, held_out: bool = True) -> tuple[str, ...]:
  """The scalar keys of `sample_metrics` (class_shares, a list, aside): what a sweep can plot of samples.

  Args:
    prefix: `sample_metrics`' prefix.
    classes: a feature space with a class head (classes_covered, confidence).
    held_out: scored beside held-out images whose reference keeps their logits (the "_real" keys, fid_ratio).
  """
  names = list(SCORES) + (["classes_covered", "confidence"] if classes else [])
  if held_out:
    names += [f"{key}_real" for key in SCORES] + (["confidence_real"] if classes else []) + ["fid_ratio"]
  return tuple(prefix + name for name in names) + ("num_samples", "num_scored")


def _scores(feats: np.ndarray, ref: Reference) -> dict:
  precision, recall = precision_recall(ref.features, feats)
  kid, kid_se = kernel_distance(ref.features, feats)
  return {"fid": frechet_distance_from_stats(ref.mean, ref.covariance, *gaussian_fit(feats)), "kid": kid,
          "kid_se": kid_se, "precision": precision, "recall": recall}


def sample_metrics(images, space: FeatureSpace, ref: Reference, held_out: Reference | None = None,
                   prefix: str = "") -> dict:
  """What a generative run reports about its samples (results.json's sample metrics), in one feature space.

  Every score is measured at one sample count n for the samples and, with `held_out`, for real
  held-out images beside them (FID and precision/recall depend on the count): n is the number
  of samples, or of held-out images where there are fewer, and the first n of each are scored.

  Args:
    images: (N, H, W, C) samples, float in [0, 1] or uint8; N >= 4.
    space: the feature network.
    ref: real images' statistics in `space` (`reference`), e.g. the training split.
    held_out: other real images in `space` (e.g. the test split), scored against `ref` like
      the samples: what a perfect model would score at this count.
    prefix: put before every key but num_samples / num_scored (a second space's metrics).

  Returns:
    {"fid", "kid" and "kid_se" (`kernel_distance`), "precision", "recall" (k = 3) against the
    reference; with `held_out` the same of the real images as "<metric>_real", and "fid_ratio"
    = fid / fid_real; for a space with a class head "classes_covered" (classes with a share >=
    COVERED_SHARE among all N samples), "class_shares" (rounded to 4 places) and "confidence"
    (the mean largest class probability, with its "_real" value); "num_samples": N,
    "num_scored": n}. Samples with a NaN or infinite pixel (a diverged model) score NaN and
    cover no class, rather than failing the run.

  Raises:
    ValueError: for a reference measured in another space.
  """
  _check_space(space, ref)
  if held_out is not None:
    _check_space(space, held_out)
  images = np.asarray(images)
  n = len(images) if held_out is None else min(len(images), len(held_out.features))
  counts = {"num_samples": int(len(images)), "num_scored": int(n)}
  if np.issubdtype(images.dtype, np.floating) and not np.all(np.isfinite(images)):
    nan = float("nan")
    out = dict.fromkeys(SCORES, nan)
    if space.num_classes:
      out.update(classes_covered=0, class_shares=[nan] * space.num_classes, confidence=nan)
  else:
    logits, feats = space.outputs(images)
    out = _scores(feats[:n], ref)
    if space.num_classes:
      shares = np.bincount(np.argmax(logits, -1), minlength=space.num_classes) / len(logits)
      out.update(classes_covered=int(np.sum(shares >= COVERED_SHARE)), class_shares=shares.round(4).tolist(),
                 confidence=_confidence(logits))
  if held_out is not None:
    real = _scores(held_out.features[:n], ref)
    if space.num_classes and held_out.logits is not None:
      real["confidence"] = _confidence(held_out.logits)
    out.update({f"{key}_real": value for key, value in real.items()})
    out["fid_ratio"] = out["fid"] / max(out["fid_real"], 1e-12)
  return {**{prefix + key: value for key, value in out.items()}, **counts}


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


def gaussian_mixture_samples(images, n: int, components: int | None = None, seed: int = 0,
                             max_components: int = 8) -> np.ndarray:
  """Images drawn from a full-covariance Gaussian mixture fitted to the pixels of `images`.

  A model with the pixel correlations a few Gaussians can hold and no finer structure: better
  than independent pixels, worse than real images (its draws are blurred, grey-speckled
  digits), between the two ends of a feature space's scale.

  Args:
    images: (N, H, W, C) float images in [0, 1].
    n: number of images.
    components: mixture components (scikit-learn's GaussianMixture, k-means initialised); None
      picks the number in 1..max_components with the lowest BIC on `images` (3 for the digits'
      training split).
    seed: seeds the fits and the draw.
    max_components: the largest number BIC chooses from.

  Returns:
    (n, H, W, C) float32 in [0, 1] (draws clipped to the range).
  """
  from sklearn.mixture import GaussianMixture  # pylint: disable=import-outside-toplevel
  images = np.asarray(images, np.float64)
  flat = images.reshape(len(images), -1)
  fit = lambda k: GaussianMixture(k, covariance_type="full", reg_covar=1e-4, random_state=seed).fit(flat)
  if components is None:
    mixture = min((fit(k) for k in range(1, max_components + 1)), key=lambda m: m.bic(flat))
  else:
    mixture = fit(components)
  draws, _ = mixture.sample(n)
  draws = draws[np.random.default_rng(seed).permutation(n)]  # sample() returns the draws grouped by component
  return np.clip(draws, 0.0, 1.0).reshape(n, *images.shape[1:]).astype(np.float32)
