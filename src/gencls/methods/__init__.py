"""Methods: one file each, found by name through the registry (``create_method``); other
packages add theirs through the entry-point group ``gencls.methods`` (see ``base``)."""
from gencls.methods.base import (ENTRY_POINT_GROUP, CannotGenerate, Method, NonFiniteError, StepGuard, create_method,
                                 get_method_class, list_methods, method_source, plugin_failures, register_method)
from gencls.methods import aae, acgan, improved_gan, supervised, vae_m2  # noqa: F401  (registers the methods)

__all__ = ["ENTRY_POINT_GROUP", "CannotGenerate", "Method", "NonFiniteError", "StepGuard", "create_method",
           "get_method_class", "list_methods", "method_source", "plugin_failures", "register_method"]
