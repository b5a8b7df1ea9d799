"""Data: sources (getting files), datasets (in-memory tensors), the semi-supervised split, image files."""
from gencls.data.datasets import Split, list_datasets, load_split, register_dataset
from gencls.data.images import find_images, load_image
from gencls.data.sources import default_root, fetch_fashion_mnist, fetch_mnist
from gencls.data.split import SSLSplit, make_split

__all__ = ["Split", "SSLSplit", "default_root", "fetch_fashion_mnist", "fetch_mnist", "find_images", "list_datasets", "load_image",
           "load_split", "make_split", "register_dataset"]
