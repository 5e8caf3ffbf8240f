"""Exact PyTorch port of the course's Keras pre-activation SiLU ResNet, with its converter,
fine-tuning on CIFAR-10, evaluation, reports and the way back to Keras (``api.py``)."""
from .errors import UserError

API = ("Report", "Run", "evaluate", "finetune", "from_keras", "load", "report", "save", "to_keras")
MODEL = ("ResidualNetwork", "count_parameters", "images_to_input", "summary")
__all__ = [*API, *MODEL, "UserError"]


def __getattr__(name):
    """The API (api.py) and the network (model.py) are imported on first use: a script that needs
    only a part of the package does not pay for all of it (matplotlib, h5py), and the isolated
    Keras-file reader (formats/isolation.py) imports no torch at all."""
    if name in API:
        from . import api
        return getattr(api, name)
    if name in MODEL:
        from . import model
        return getattr(model, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():  # tab completion lists the API before its first use
    return sorted([*globals(), *API, *MODEL])
