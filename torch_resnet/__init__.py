"""Exact PyTorch port of the course's Keras pre-activation SiLU ResNet, with its converter,
fine-tuning on CIFAR-10, evaluation, reports and the way back to Keras (``api.py``)."""
from .errors import UserError

API = ("Report", "Run", "evaluate", "finetune", "from_keras", "load", "report", "save", "to_keras")
MODEL = ("ResidualNetwork", "count_parameters", "images_to_input", "summary")
# The data sets (CIFAR10 and CIFAR100 are their formats), the stand-ins in the course's formats,
# and the training precision a device gets: what the notebook uses besides the API.
DATA = ("CIFAR10", "CIFAR100", "find_or_download", "write_cifar", "write_stand_in_keras_pickle", "describe_training")
__all__ = [*API, *MODEL, *DATA, "UserError"]
# the module of each lazily imported name
_MODULES = {**dict.fromkeys(API, "api"), **dict.fromkeys(MODEL, "model"),
            "CIFAR10": "data.cifar", "CIFAR100": "data.cifar", "find_or_download": "data.cifar",
            "write_cifar": "data.synthetic", "write_stand_in_keras_pickle": "data.synthetic",
            "describe_training": "training.performance"}


def __getattr__(name):
    """The public names are imported on first use, each with its own module only (api.py, model.py,
    ...): a script that needs only a part of the package does not pay for all of it (matplotlib,
    h5py), and the isolated Keras-file reader (formats/isolation.py) imports no torch at all."""
    if name in _MODULES:
        import importlib
        return getattr(importlib.import_module(f".{_MODULES[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():  # tab completion lists the public names before their first use
    return sorted([*globals(), *_MODULES])
