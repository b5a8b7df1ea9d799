"""Methods: one file each, found by name through the registry (``create_method``)."""
from gencls.methods.base import (CannotGenerate, Method, NonFiniteError, StepGuard, create_method, get_method_class,
                                 list_methods, register_method)
from gencls.methods import aae, acgan, improved_gan, supervised, vae_m2  # noqa: F401  (registers the methods)

__all__ = ["CannotGenerate", "Method", "NonFiniteError", "StepGuard", "create_method", "get_method_class", "list_methods", "register_method"]
