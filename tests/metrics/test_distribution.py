import numpy as np
import pytest
import torch

from medm2g_core.errors import InputError
from medm2g_core.metrics.distribution import (
    CallableExtractor,
    frechet_distance,
    kernel_inception_distance,
    load_feature_extractor,
    polynomial_mmd,
)


class _Identity(torch.nn.Module):
    """A torchmetrics 'feature' module that returns its input: the features are the fixtures."""

    def __init__(self, dim: int):
        super().__init__()
        self.num_features = dim

    def forward(self, x):
        return x


@pytest.fixture
def features():
    rng = np.random.default_rng(0)
    return rng.normal(size=(48, 16)), rng.normal(0.4, 1.3, size=(48, 16))


def test_fid_equals_torchmetrics(features):
    from torchmetrics.image.fid import FrechetInceptionDistance

    real, fake = features
    metric = FrechetInceptionDistance(feature=_Identity(16), normalize=True)
    metric.update(torch.tensor(real), real=True)
    metric.update(torch.tensor(fake), real=False)
    assert frechet_distance(real, fake) == pytest.approx(metric.compute().item(), rel=1e-6)
    assert frechet_distance(torch.tensor(real), torch.tensor(real)) == pytest.approx(0.0, abs=1e-6)


def test_kid_equals_torchmetrics_on_the_full_set(features):
    from torchmetrics.image.kid import KernelInceptionDistance

    real, fake = features
    metric = KernelInceptionDistance(feature=_Identity(16), subsets=1, subset_size=48, normalize=True)
    metric.update(torch.tensor(real), real=True)
    metric.update(torch.tensor(fake), real=False)
    expected, _ = metric.compute()
    # subset_size = N: every subset is a permutation of the whole set, and MMD is permutation-invariant.
    assert polynomial_mmd(fake, real) == pytest.approx(expected.item(), rel=1e-6)
    kid = kernel_inception_distance(fake, real, subsets=3, subset_size=100)
    assert kid.subset_size == 48 and kid.mean == pytest.approx(expected.item(), rel=1e-6) and kid.std == pytest.approx(0, abs=1e-9)


def test_kid_subsets_are_seeded(features):
    real, fake = features
    first = kernel_inception_distance(fake, real, subsets=5, subset_size=20, seed=3)
    assert first == kernel_inception_distance(fake, real, subsets=5, subset_size=20, seed=3)
    assert first.std > 0


def test_callable_extractor_batches():
    extractor = CallableExtractor(name="mean-pixel", function=lambda x: x.reshape(len(x), -1).mean(axis=1, keepdims=True), batch_size=2)
    out = extractor(np.ones((5, 4, 4), dtype=np.float32))
    assert out.shape == (5, 1) and extractor.name == "mean-pixel"


def test_load_feature_extractor_from_torchvision_layout(tmp_path):
    from monai.networks.nets import DenseNet121
    from safetensors.torch import save_file

    torch.manual_seed(0)
    network = DenseNet121(spatial_dims=2, in_channels=1, out_channels=3)
    # Rename MONAI keys to torchvision's ("denselayer1.norm1.weight"), as a converted XRV/torchvision file holds them.
    state = {k.replace(".layers.", "."): v for k, v in network.state_dict().items() if k.startswith("features.")}
    state["classifier.weight"] = torch.zeros(3, 1024)
    path = tmp_path / "xrv.safetensors"
    save_file(state, str(path))
    extractor = load_feature_extractor(path)
    assert extractor.name.startswith("densenet121-xrv[xrv.safetensors")
    images = np.random.default_rng(0).random((3, 64, 64)).astype(np.float32)
    features = extractor(images)
    assert features.shape == (3, 1024) and np.isfinite(features).all()
    network.eval()
    with torch.no_grad():
        batch = torch.nn.functional.interpolate(torch.tensor(images)[:, None], size=(224, 224), mode="bilinear", align_corners=False) * 2048 - 1024
        expected = torch.nn.functional.adaptive_avg_pool2d(torch.relu(network.features(batch)), 1).flatten(1)
    np.testing.assert_allclose(features, expected.double().numpy(), rtol=1e-5, atol=1e-6)


def test_pickles_are_refused(tmp_path):
    path = tmp_path / "inception.pth"
    path.write_bytes(b"\x80\x04not really")
    with pytest.raises(InputError, match="safetensors"):
        load_feature_extractor(path)
