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
