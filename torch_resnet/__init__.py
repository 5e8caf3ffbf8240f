"""Exact PyTorch port of the course's Keras pre-activation SiLU ResNet, with its converter,
fine-tuning on CIFAR-10, evaluation, reports and the way back to Keras (``api.py``)."""
from .errors import UserError
from .model import ResidualNetwork, count_parameters, images_to_input, summary

API = ("Report", "Run", "evaluate", "finetune", "from_keras", "load", "report", "save", "to_keras")
__all__ = [*API, "ResidualNetwork", "UserError", "count_parameters", "images_to_input", "summary"]


def __getattr__(name):
    """The API (api.py) is imported on first use: a script that needs only a part of the package
    (every one of them) does not pay for all of it (matplotlib, h5py) when it starts."""
    if name in API:
        from . import api
        return getattr(api, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():  # tab completion lists the API before its first use
    return sorted([*globals(), *API])
