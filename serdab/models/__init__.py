"""Model zoo and model loading: every entry point that takes a model goes through ``load_model``."""

from serdab.models.load import LoadedModel, cache_dir, export_module, load_model
from serdab.models.zoo import ZOO, ZooEntry, build_module, zoo_entry

__all__ = ["ZOO", "LoadedModel", "ZooEntry", "build_module", "cache_dir", "export_module", "load_model", "zoo_entry"]
