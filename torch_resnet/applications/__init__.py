"""Keras 3's ``keras.applications`` ResNets (ResNet50/101/152, ResNet50V2/101V2/152V2) in PyTorch,
one family: ``specs.py`` (what tells them apart, no torch), ``resnet.py`` (the modules),
``keras_names.py`` (Keras variable paths <-> state-dict keys, both ways).

    from torch_resnet.applications import build, keras_to_torch
    model = build("ResNet50", include_top=False, pooling="avg")
    model.load_state_dict(keras_to_torch({v.path: v.numpy() for v in keras_model.weights}, "ResNet50"))
"""
from .specs import SPECS, ResNetSpec

__all__ = ["SPECS", "ResNetSpec", "KerasResNet", "build", "keras_to_torch", "torch_to_keras", "name_table"]
# the module of each lazily imported name: the specs and the name table need no torch
_MODULES = {"KerasResNet": "resnet", "build": "resnet", "keras_to_torch": "keras_names",
            "torch_to_keras": "keras_names", "name_table": "keras_names"}


def __getattr__(name):
    if name in _MODULES:
        import importlib
        return getattr(importlib.import_module(f".{_MODULES[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
