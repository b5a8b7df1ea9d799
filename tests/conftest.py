import os
from pathlib import Path

import pytest
import torch

from gencls.data import default_root, fetch_mnist, load_split


@pytest.fixture(scope="session")
def data_root() -> Path:
    """Real MNIST, fetched once (from the data root if present, else through the normal sources)."""
    root = default_root()
    fetch_mnist(root, log=lambda s: None)
    os.environ["GENCLS_DATA"] = str(root)
    return root


@pytest.fixture(scope="session")
def mnist_test(data_root):
    return load_split("mnist", "test", data_root, log=lambda s: None)


@pytest.fixture(autouse=True)
def _threads():
    torch.set_num_threads(2)


FEATURE_NET_SUBSET, FEATURE_NET_EPOCHS = 5000, 2  # the full network (60000 images, 4 epochs) is benchmarks' job


@pytest.fixture(scope="session")
def small_feature_net(tmp_path_factory, data_root):
    """A feature network trained on 5000 MNIST training images (the real recipe, fewer images and epochs)."""
    from gencls.evaluation import featurenet

    cache = tmp_path_factory.mktemp("feature_nets")
    info = featurenet.prepare("mnist", data_root, cache_dir=cache, log=lambda s: None,
                              subset=FEATURE_NET_SUBSET, epochs=FEATURE_NET_EPOCHS)
    return featurenet.load_path(info["path"])
