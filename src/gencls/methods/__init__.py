"""Methods: one file each, found by name through the registry (``create_method``)."""
from gencls.methods.base import (CannotGenerate, Method, create_method, get_method_class, list_methods,
                                 register_method)
from gencls.methods import acgan, improved_gan, supervised  # noqa: F401  (registers the methods)

__all__ = ["CannotGenerate", "Method", "create_method", "get_method_class", "list_methods", "register_method"]
