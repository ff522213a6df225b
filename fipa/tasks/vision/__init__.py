"""Classification: digits / MNIST-1D / CIFAR / Tiny-ImageNet data, small CNNs, a 1-D CNN and a CIFAR
ResNet-18.

Importing this package registers the ``vision`` task; the task registry loads it lazily, so
other tasks never pay torchvision's import time.
"""

from fipa.tasks.vision import mnist1d  # noqa: F401  (registers the mnist1d data set)
from fipa.tasks.vision.data import DATASETS, TINY_DIR, ArrayData, DataRequest, load_dataset, load_digits_data
from fipa.tasks.vision.download import download, prepare_tiny_imagenet
from fipa.tasks.vision.models import MODELS, Classifier
from fipa.tasks.vision.task import Vision, VisionParams

__all__ = ["DATASETS", "MODELS", "TINY_DIR", "ArrayData", "Classifier", "DataRequest", "Vision",
           "VisionParams", "download", "load_dataset", "load_digits_data", "prepare_tiny_imagenet"]
