"""Image classification: digits / CIFAR / Tiny-ImageNet data, small CNNs and a CIFAR ResNet-18.

Importing this package registers the ``vision`` task; the task registry loads it lazily, so
other tasks never pay torchvision's import time.
"""

from fipa.tasks.vision.data import DATASETS, TINY_DIR, ImageData, load_dataset, load_digits_data
from fipa.tasks.vision.download import download, prepare_tiny_imagenet
from fipa.tasks.vision.models import MODELS, Classifier
from fipa.tasks.vision.task import Vision, VisionParams

__all__ = ["DATASETS", "MODELS", "TINY_DIR", "Classifier", "ImageData", "Vision", "VisionParams", "download",
           "load_dataset", "load_digits_data", "prepare_tiny_imagenet"]
