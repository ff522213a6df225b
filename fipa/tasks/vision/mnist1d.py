"""MNIST-1D (Greydanus & Kolter 2020): ten 1-D digit templates, padded, sheared, scaled, shifted
and made noisy, generated offline by the ``mnist1d`` package's own ``make_dataset``.

Never its ``get_dataset``, which downloads. The arrays depend only on the generator's arguments,
all of which are options here; they are generated once and cached under ``task.cache`` in an
``.npz`` file named by a fingerprint of those arguments and the package version
(:func:`fipa.io.cached_arrays`). Its authors report about 94% test accuracy for a small CNN
against 68% for an MLP, so a federated split leaves room between methods.
"""

from __future__ import annotations

import contextlib
import random
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from importlib.metadata import PackageNotFoundError, version

import numpy as np
import torch

from fipa.errors import ConfigError
from fipa.io import cached_arrays
from fipa.keys import key
from fipa.tasks.vision.data import DATASETS, ArrayData, DataRequest


@dataclass
class MNIST1DOptions:
    """The arguments of ``mnist1d.data.make_dataset`` (its ``get_dataset_args``; the defaults are
    the package's, which give its published data set), each documented on its field."""

    num_samples: int = key(5000, "signals generated, equally many per digit", ge=20)
    train_split: float = key(0.8, "share of them in the training set (the rest is the test set)", gt=0, lt=1)
    seed: int = key(42, "the generator's seed (42: the package's published data)", ge=0)
    template_len: int = key(12, "points of each digit template", ge=2)
    padding: list[int] = key([36, 60], "[min, max] zero padding added around a template")
    scale_coeff: float = key(0.4, "random scaling of a signal's amplitude", ge=0)
    max_translation: int = key(48, "largest random circular shift", ge=0)
    corr_noise_scale: float = key(0.25, "scale of the correlated (smoothed) noise", ge=0)
    iid_noise_scale: float = key(2e-2, "scale of the independent noise", ge=0)
    shear_scale: float = key(0.75, "random shear of the signal", ge=0)
    shuffle_seq: bool = key(False, "permute the time axis (a fixed permutation): destroys locality")
    final_seq_length: int = key(40, "points of each signal after interpolation", ge=8)

    def check(self) -> list[tuple[str, str]]:
        if len(self.padding) != 2 or not 0 <= self.padding[0] <= self.padding[1]:
            return [("padding", f"must be [min, max] with 0 <= min <= max, got {self.padding}")]
        return []


@contextlib.contextmanager
def _global_rng_kept() -> Iterator[None]:
    """``make_dataset`` seeds Python's and numpy's global generators: restore both afterwards, so
    loading data never changes the random stream of anything else in the process."""
    np_state, py_state = np.random.get_state(), random.getstate()  # noqa: NPY002 (the legacy global)
    try:
        yield
    finally:
        np.random.set_state(np_state)  # noqa: NPY002
        random.setstate(py_state)


def generate(options: MNIST1DOptions) -> dict[str, np.ndarray]:
    """The generator's arrays: x [n, L] float64, y [n], x_test [n_test, L], y_test [n_test]."""
    try:
        from mnist1d.data import make_dataset
        from mnist1d.utils import ObjectView
    except ImportError as e:
        raise ConfigError(f"task.dataset: mnist1d needs the `mnist1d` package ({e}); `pip install mnist1d` "
                          "(it is a dependency of fipa: reinstall with `pip install -e .`)") from None
    with _global_rng_kept():
        data = make_dataset(ObjectView(asdict(options)))
    return {k: np.asarray(data[k]) for k in ("x", "y", "x_test", "y_test")}


def _generator_version() -> str:
    try:
        return version("mnist1d")
    except PackageNotFoundError:
        return "unknown"


@DATASETS.register("mnist1d", params=MNIST1DOptions, train_size=4000, spatial_dims=1)
def load_mnist1d(req: DataRequest) -> ArrayData:
    """MNIST-1D: signals [n, 1, final_seq_length] float32, 10 classes, the generator's own split."""
    options = req.options
    fingerprint = {"generator": "mnist1d.make_dataset", "version": _generator_version(), **asdict(options)}
    arrays = cached_arrays(req.cache, "mnist1d", fingerprint, lambda: generate(options))
    x = torch.as_tensor(arrays["x"], dtype=torch.float32)[:, None]  # [n, 1, L]
    x_test = torch.as_tensor(arrays["x_test"], dtype=torch.float32)[:, None]
    y = torch.as_tensor(arrays["y"], dtype=torch.int64)
    y_test = torch.as_tensor(arrays["y_test"], dtype=torch.int64)
    # make_dataset standardizes the whole set; the training set's own moments normalize here
    mean, std = float(x.double().mean()), float(x.double().std())
    return ArrayData(x, y, x_test, y_test, 10, 1.0, (mean,), (std,))
