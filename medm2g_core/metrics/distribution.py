"""Distribution metrics between generated and real images: FID and KID on extracted features.

The formulas are pure functions of two feature arrays ``(N, D)`` (numpy or torch), equal to
torchmetrics' / clean-fid's on the same features:

* FID = ‖μ_a − μ_b‖² + Tr(Σ_a + Σ_b − 2·(Σ_a Σ_b)^½), covariances unbiased (N − 1), the matrix square
  root by ``scipy.linalg.sqrtm`` in float64 (imaginary round-off discarded).
* KID = unbiased MMD² with the polynomial kernel k(x, y) = (γ·xᵀy + c)^d (γ = 1/D, c = 1, d = 3),
  averaged over ``subsets`` random subsets of ``subset_size`` samples per side (drawn without
  replacement); returns mean and population std over subsets, as torchmetrics does.

The value depends entirely on the feature extractor, so an extractor has a ``name`` that is printed
beside every number (with the sample count). ``FeatureExtractor`` is the plug: any callable mapping a
batch of 2D images ``(N, H, W)`` float in [0, 1] to ``(N, D)`` features. ``CallableExtractor`` wraps
one (e.g. the bundle's aligned X-ray encoder); ``load_feature_extractor(path)`` builds a torchvision-style
DenseNet-121 (ImageNet or XRV layout) from a local **safetensors** file (pickles are refused).
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Protocol

import numpy as np

from medm2g_core.errors import InputError


def _as_float64(features: Any) -> np.ndarray:
    if hasattr(features, "detach"):
        features = features.detach().cpu().double().numpy()
    array = np.asarray(features, dtype=np.float64)
    if array.ndim != 2:
        raise ValueError(f"features must be a 2D (N, D) array, got shape {array.shape}")
    return array


def frechet_distance(features_a: Any, features_b: Any) -> float:
    """Fréchet distance between Gaussians fitted to two ``(N, D)`` feature sets (FID when the features
    are Inception pool3). Needs N ≥ 2 on each side."""
    a, b = _as_float64(features_a), _as_float64(features_b)
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"feature sizes differ: {a.shape[1]} vs {b.shape[1]}")
    if len(a) < 2 or len(b) < 2:
        raise ValueError("FID needs at least 2 samples on each side")
    from scipy import linalg

    mu_a, mu_b = a.mean(axis=0), b.mean(axis=0)
    sigma_a, sigma_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    sigma_a, sigma_b = np.atleast_2d(sigma_a), np.atleast_2d(sigma_b)
    covmean = linalg.sqrtm(sigma_a @ sigma_b)
    if not np.isfinite(covmean).all():
        # Near-singular product (few samples): regularise as pytorch-fid / clean-fid do.
        offset = np.eye(sigma_a.shape[0]) * 1e-6
        covmean = linalg.sqrtm((sigma_a + offset) @ (sigma_b + offset))
    covmean = np.real(covmean)
    diff = mu_a - mu_b
    return float(diff @ diff + np.trace(sigma_a) + np.trace(sigma_b) - 2.0 * np.trace(covmean))


def polynomial_mmd(features_a: Any, features_b: Any, *, degree: int = 3, gamma: float | None = None, coef: float = 1.0) -> float:
    """Unbiased MMD² between two feature sets with the polynomial kernel (γ defaults to 1/D)."""
    a, b = _as_float64(features_a), _as_float64(features_b)
    gamma = 1.0 / a.shape[1] if gamma is None else gamma
    k_aa = (a @ a.T * gamma + coef) ** degree
    k_bb = (b @ b.T * gamma + coef) ** degree
    k_ab = (a @ b.T * gamma + coef) ** degree
    n, m = len(a), len(b)
    if n < 2 or m < 2:
        raise ValueError("KID needs at least 2 samples on each side")
    term_aa = (k_aa.sum() - np.trace(k_aa)) / (n * (n - 1))
    term_bb = (k_bb.sum() - np.trace(k_bb)) / (m * (m - 1))
    return float(term_aa + term_bb - 2.0 * k_ab.sum() / (n * m))


@dataclass(frozen=True)
class KernelDistance:
    """KID mean and population std over subsets, and the settings that produced them."""

    mean: float
    std: float
    subsets: int
    subset_size: int


def kernel_inception_distance(
    features_a: Any,
    features_b: Any,
    *,
    subsets: int = 100,
    subset_size: int = 1000,
    degree: int = 3,
    gamma: float | None = None,
    coef: float = 1.0,
    seed: int = 0,
) -> KernelDistance:
    """KID: ``polynomial_mmd`` averaged over random subsets (``subset_size`` is capped at the smaller
    set's size, so that small test sets still give a value; the capped size is returned)."""
    a, b = _as_float64(features_a), _as_float64(features_b)
    size = min(subset_size, len(a), len(b))
    rng = np.random.default_rng(seed)
    values = [
        polynomial_mmd(a[rng.permutation(len(a))[:size]], b[rng.permutation(len(b))[:size]], degree=degree, gamma=gamma, coef=coef)
        for _ in range(subsets)
    ]
    return KernelDistance(mean=float(np.mean(values)), std=float(np.std(values)), subsets=subsets, subset_size=size)


class FeatureExtractor(Protocol):
    """Maps images ``(N, H, W)`` float32 in [0, 1] to features ``(N, D)``; ``name`` is printed with FIDs."""

    name: str

    def __call__(self, images: np.ndarray) -> np.ndarray: ...


@dataclass
class CallableExtractor:
    """Wrap any callable (e.g. the bundle's aligned X-ray encoder) with the name to print."""

    name: str
    function: Callable[[np.ndarray], Any]
    batch_size: int = 16

    def __call__(self, images: np.ndarray) -> np.ndarray:
        chunks = [_as_float64(self.function(images[i : i + self.batch_size])) for i in range(0, len(images), self.batch_size)]
        return np.concatenate(chunks, axis=0)


_DENSE_LAYER = re.compile(r"^(.*denselayer\d+)\.(norm|relu|conv)\.?([12])\.(weight|bias|running_mean|running_var|num_batches_tracked)$")


def load_feature_extractor(path: str | Path, *, device: str = "cpu") -> CallableExtractor:
    """Build a DenseNet-121 feature extractor from a local torchvision-style ``.safetensors`` file.

    Accepted layouts: torchvision ``densenet121`` (3-channel, ImageNet normalisation, 224×224) and
    torchxrayvision's DenseNet-121 (1-channel, intensities scaled to [−1024, 1024], 224×224). Features
    are the 1024-D global-average-pooled ReLU output before the classifier. The name printed beside
    FID is ``densenet121-<layout>[<file>, sha256 <first 12>]``. Pickle files are refused; convert them
    with ``safetensors.torch.save_file`` in a trusted environment.
    """
    path = Path(path)
    if path.suffix != ".safetensors":
        raise InputError(path, "feature weights must be a .safetensors file (pickle formats can execute code)",
                         "convert with safetensors.torch.save_file(torch.load(f, weights_only=True), 'features.safetensors')")
    if not path.is_file():
        raise FileNotFoundError(2, "No such file", str(path))
    import torch
    from monai.networks.nets import DenseNet121

    from medm2g_core.serialization import load_weights

    state = {k: v for k, v in load_weights(path, device="cpu").items()}
    renamed: dict[str, Any] = {}
    for key, value in state.items():
        key = key.removeprefix("module.").removeprefix("model.")
        match = _DENSE_LAYER.match(key)
        renamed[f"{match.group(1)}.layers.{match.group(2)}{match.group(3)}.{match.group(4)}" if match else key] = value
    if "features.conv0.weight" not in renamed or not any(".denseblock4." in k for k in renamed):
        raise InputError(path, "not a DenseNet-121 state dict (no features.conv0 / denseblock4 weights)",
                         "give torchvision densenet121 or torchxrayvision DenseNet-121 weights as safetensors")
    channels = int(renamed["features.conv0.weight"].shape[1])
    network = DenseNet121(spatial_dims=2, in_channels=channels, out_channels=1)
    features = network.features
    wanted = {k.removeprefix("features."): v for k, v in renamed.items() if k.startswith("features.")}
    own = features.state_dict()
    missing = sorted(set(own) - set(wanted) - {k for k in own if k.endswith("num_batches_tracked")})
    if missing:
        raise InputError(path, f"DenseNet-121 weights incomplete (missing {missing[:3]})", "use the complete state dict")
    features.load_state_dict({k: wanted[k] for k in own if k in wanted}, strict=False)
    features.eval().to(device)
    layout = "xrv" if channels == 1 else "imagenet"
    digest = hashlib.sha256(path.read_bytes()).hexdigest()[:12]

    @torch.no_grad()
    def extract(images: np.ndarray) -> np.ndarray:
        batch = torch.as_tensor(np.asarray(images, dtype=np.float32))[:, None].to(device)
        batch = torch.nn.functional.interpolate(batch, size=(224, 224), mode="bilinear", align_corners=False)
        if channels == 1:
            batch = batch * 2048.0 - 1024.0
        else:
            mean = torch.tensor([0.485, 0.456, 0.406], device=device)[None, :, None, None]
            std = torch.tensor([0.229, 0.224, 0.225], device=device)[None, :, None, None]
            batch = (batch.repeat(1, 3, 1, 1) - mean) / std
        output = torch.relu(features(batch))
        return torch.nn.functional.adaptive_avg_pool2d(output, 1).flatten(1).double().cpu().numpy()

    return CallableExtractor(name=f"densenet121-{layout}[{path.name}, sha256 {digest}]", function=extract)
