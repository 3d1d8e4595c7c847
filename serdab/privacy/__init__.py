"""How much a cut tensor reveals of the input image (seed 000's similarity metrics)."""

from serdab.privacy.images import LabelledImage, default_images, load_image_dir
from serdab.privacy.leakage import CutLeakage, LeakageReport, measure_leakage
from serdab.privacy.metrics import MapSimilarity, best_map_similarity, resolution_of

__all__ = [
    "CutLeakage",
    "LabelledImage",
    "LeakageReport",
    "MapSimilarity",
    "best_map_similarity",
    "default_images",
    "load_image_dir",
    "measure_leakage",
    "resolution_of",
]
