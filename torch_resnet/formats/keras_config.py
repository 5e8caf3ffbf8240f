"""The model a Keras file describes (a ``.keras`` file's ``config.json``, a Keras 2 ``.h5``'s
``model_config``), checked against this network. Read as JSON data only: nothing in it is
deserialized, imported or run, and a model that would run code (a ``Lambda``) is refused.

A Sequential model is checked layer by layer: the stem, 9 residual blocks (the author's own
class, whose inside the config does not show), BatchNormalization, SiLU, global average pooling,
Dense. The widths and strides of the blocks are read from the input shapes Keras 3 records
(``build_config``); a block's own settings only where its config names them (``activation``,
``use_bias``). A Functional model, made of Keras' own layers only, by the kinds, counts and
settings of its layers. A model of the author's own class says nothing checkable: its weights decide.
"""
from __future__ import annotations

import json
import re

from ..errors import UserError
from ..architecture import BLOCKS, FEATURES

SILU = ("silu", "swish")
STEM = {"filters": BLOCKS[0][0], "kernel_size": [3, 3], "strides": [1, 1]}
CONV = {"padding": "same", "use_bias": False, "activation": "linear", "dilation_rate": [1, 1], "groups": 1,
        "data_format": "channels_last"}
BN = {"epsilon": 1e-3, "center": True, "scale": True, "axis": (-1, 3, [-1], [3])}
# A tuple lists the values allowed; softmax on the head gives probabilities with the logits' ranking.
EXPECTED = {"Conv2D": CONV, "BatchNormalization": BN, "Activation": {"activation": SILU},
            "GlobalAveragePooling2D": {"keepdims": False, "data_format": "channels_last"},
            "Dense": {"use_bias": True, "activation": ("linear", "softmax")},
            "block": {"activation": SILU, "use_bias": False}}
LAYOUT = ["Conv2D"] + ["block"] * len(BLOCKS) + ["BatchNormalization", "Activation", "GlobalAveragePooling2D",
                                                 "Dense"]
CODE = ("Lambda", "__lambda__", "TFOpLambda", "SlicingOpLambda")


def describe_config(text: str, where: str) -> tuple[int | None, dict | None]:
    """(the course network's classes, None) or (None, a keras.applications ResNet's description:
    ``family_description``) of a model description; refused if it holds code or another network."""
    try:
        config = json.loads(text)
    except (ValueError, RecursionError) as e:
        raise UserError(f"{where}: not readable JSON ({type(e).__name__})") from None
    _refuse_code(config, where)
    if not isinstance(config, dict) or not isinstance(config.get("config"), dict):
        raise UserError(f"{where}: not a Keras model description")
    layers = flat_layers(config)
    if any(_get(_get(l, "config"), "kernel_size") == [7, 7] and _get(_get(l, "config"), "filters") == 64
           for l in layers):
        return None, family_description(layers, where)
    return check_config(config, where), None


def check_config(config: dict, where: str) -> int | None:
    """Refuse a config that describes another network than the course's (naming the first
    difference); returns the Dense layer's units where the config gives them."""
    layers = config["config"].get("layers")
    layers = [l for l in layers if _get(l, "class_name") != "InputLayer"] if isinstance(layers, list) else []
    if config.get("class_name") in ("Functional", "Model"):
        return _check_functional(layers, where)
    if config.get("class_name") != "Sequential":
        return None
    kinds = [_kind(l) for l in layers]
    for i, want in enumerate(LAYOUT):
        if i >= len(layers):
            raise UserError(f"{where}: the model ends after {len(layers)} layers, where this network has "
                            f"{_describe(i)}")
        if kinds[i] != want:
            raise UserError(f"{where}: layer #{i + 1} {_name(layers[i])!r} is a {_get(layers[i], 'class_name')}, "
                            f"where this network has {_describe(i)}")
    if len(layers) > len(LAYOUT):
        raise UserError(f"{where}: layer #{len(LAYOUT) + 1} {_name(layers[len(LAYOUT)])!r} comes after the Dense "
                        f"head; this network ends there")
    for i, layer in enumerate(layers):
        _check_settings(layer, {**STEM, **CONV} if i == 0 else EXPECTED[kinds[i]], _describe(i), where)
    _check_shapes(layers, where)
    return _units(layers[-1])


def _check_functional(layers, where) -> int | None:
    """A Functional model is a graph of Keras' own layers: their kinds, counts and settings."""
    want = {"Conv2D": 1 + 2 * len(BLOCKS) + sum(cin != cout for cin, cout, _ in BLOCKS),
            "BatchNormalization": 2 * len(BLOCKS) + 1, "Activation": 2 * len(BLOCKS) + 1, "Add": len(BLOCKS),
            "GlobalAveragePooling2D": 1, "Dense": 1}
    for layer in layers:
        cls = _get(layer, "class_name")
        if cls not in want:
            raise UserError(f"{where}: layer {_name(layer)!r} is a {cls}; a Functional model of this network has "
                            f"only {', '.join(want)} layers")
        _check_settings(layer, {**CONV, "kernel_size": ([3, 3], [1, 1]), "strides": ([1, 1], [2, 2])}
                        if cls == "Conv2D" else EXPECTED.get(cls, {}), f"the {cls}", where)
    found = {cls: sum(_get(l, "class_name") == cls for l in layers) for cls in want}
    found["Conv2D with stride 2"] = sum(_get(_get(l, "config"), "strides") == [2, 2] for l in layers)
    want["Conv2D with stride 2"] = 2 * sum(stride == 2 for _, _, stride in BLOCKS)
    for cls, n in want.items():
        if found[cls] != n:
            raise UserError(f"{where}: {found[cls]} {cls} layers, where this network has {n}")
    return _units(next(l for l in layers if _get(l, "class_name") == "Dense"))


def _check_settings(layer, wanted: dict, what: str, where: str) -> None:
    settings = _get(layer, "config") if isinstance(_get(layer, "config"), dict) else {}
    for key, want in wanted.items():
        if key in settings and not (settings[key] in want if isinstance(want, tuple) else settings[key] == want):
            raise UserError(f"{where}: {what} {_name(layer)!r} has {key} {settings[key]!r}; this network's "
                            f"has {want[0] if isinstance(want, tuple) else want!r}")


def _units(dense) -> int | None:
    units = _get(_get(dense, "config"), "units")
    return units if isinstance(units, int) else None


def _check_shapes(layers, where) -> None:
    """Each layer's input shape where Keras recorded it: the widths and strides before it."""
    size, shapes = 32, [(32, 32, 3)]
    for cin, cout, stride in BLOCKS:
        shapes.append((size, size, cin))
        size //= stride
    shapes += [(size, size, FEATURES)] * 3 + [(FEATURES,)]
    for i, (layer, want) in enumerate(zip(layers, shapes)):
        got = _get(_get(layer, "build_config"), "input_shape")
        if isinstance(got, list) and tuple(got[1:]) != want:
            if i == 0:
                raise UserError(f"{where}: the model takes inputs of shape {got[1:]}; this network takes {list(want)}")
            raise UserError(f"{where}: {_describe(i - 1)} {_name(layers[i - 1])!r} gives outputs of shape "
                            f"{got[1:]}, this network's {list(want)} (other widths or strides)")


def flat_layers(config) -> list:
    """Every layer of a model description, nested models' layers in their place, in order."""
    out = []
    for layer in _get(_get(config, "config"), "layers") or []:
        if _get(layer, "class_name") in ("Functional", "Sequential", "Model"):
            out += flat_layers(layer)
        elif isinstance(layer, dict):
            out.append(layer)
    return out


BACKBONE_LAYERS = ("InputLayer", "ZeroPadding2D", "Conv2D", "BatchNormalization", "Activation", "MaxPooling2D", "Add")
BACKBONE_TAIL = re.compile(r"conv5_block\d+_out|post_bn|post_relu")  # after its last Add
POOLING_LAYERS = {"GlobalAveragePooling2D": "avg", "GlobalMaxPooling2D": "max"}


def family_description(layers: list, where: str) -> dict:
    """A keras.applications ResNet with what is on top: {"pooling", "head": [{"units",
    "activation", "dropout"}], "input_size"}; refused where a layer is not one of these."""
    adds = [i for i, l in enumerate(layers) if _get(l, "class_name") == "Add"]
    body, tail = layers[:adds[-1] + 1] if adds else layers, layers[adds[-1] + 1:] if adds else []
    for layer in body:
        if _get(layer, "class_name") not in BACKBONE_LAYERS:
            raise UserError(f"{where}: layer {_name(layer)!r} is a {_get(layer, 'class_name')}, which a "
                            f"keras.applications ResNet does not have; not supported")
    while tail and BACKBONE_TAIL.fullmatch(_name(tail[0])):
        tail = tail[1:]
    pooling = POOLING_LAYERS.get(_get(tail[0], "class_name")) if tail else None
    head, dropout = [], 0.0
    for layer in tail[pooling is not None:]:
        cls, settings = _get(layer, "class_name"), _settings(layer)
        rate = settings.get("rate")
        if cls == "Dropout" and not dropout and isinstance(rate, (int, float)) and 0 <= rate < 1:
            dropout = float(settings["rate"])
        elif cls == "Dense" and settings.get("use_bias", True) is True and head_activation(settings) and \
                (pooling or not head) and not (head and head[-1]["activation"] == "softmax"):
            head.append({"units": settings.get("units"), "activation": head_activation(settings), "dropout": dropout,
                         "name": _name(layer)})
            dropout = 0.0
        elif cls == "Activation" and head and head[-1]["activation"] == "linear" and head_activation(settings):
            head[-1]["activation"] = head_activation(settings)
        else:
            raise UserError(f"{where}: layer {_name(layer)!r} ({cls}) on the ResNet's features is not supported: "
                            f"a global pooling, then Dense, Dropout and Activation layers are")
    if head and pooling is None or dropout:
        raise UserError(f"{where}: {'a Dropout after the last Dense' if dropout else 'Dense layers on the unpooled feature map'}"
                        f" is not supported")
    return {"pooling": pooling, "head": head, "input_size": _input_size(layers)}


def head_activation(settings: dict) -> str | None:
    """A Dense's or Activation's activation, where it is one a head can have here."""
    from ..applications.specs import ACTIVATIONS

    activation = settings.get("activation", "linear")
    return activation if activation in ACTIVATIONS else None


def _input_size(layers) -> list[int] | None:
    """[height, width] the model was built for, where its description says."""
    for layer in layers:
        settings = _settings(layer)
        shape = settings.get("batch_shape") or settings.get("batch_input_shape") or \
            _get(_get(layer, "build_config"), "input_shape")
        if isinstance(shape, list) and len(shape) == 4:
            return shape[1:3] if all(type(n) is int and 32 <= n <= 65536 for n in shape[1:3]) else None
    return None


def _refuse_code(value, where) -> None:
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            if item.get("class_name") in CODE or "function_type" in item:
                raise UserError(f"{where}: layer {_name(item)!r} is a {item.get('class_name', 'Lambda')}, whose code "
                                f"is stored in the file; refusing a model that would run code from a file")
            stack += item.values()
        elif isinstance(item, list):
            stack += item


def _settings(layer) -> dict:
    settings = _get(layer, "config")
    return settings if isinstance(settings, dict) else {}


def _get(d, key):
    return d.get(key) if isinstance(d, dict) else None


def _name(layer) -> str:
    return str(_get(_get(layer, "config"), "name") or _get(layer, "class_name") or "?")


def _kind(layer) -> str:
    """The layer's class where it is Keras' own, else "block" (the author's class)."""
    cls, module = _get(layer, "class_name"), _get(layer, "module")
    if not isinstance(cls, str):
        return "?"
    if isinstance(module, str) and module.startswith("keras") or cls in EXPECTED and cls != "block":
        return str(cls)
    return "block"


def _describe(i: int) -> str:
    if LAYOUT[i] == "block":
        return f"residual block #{i}"
    return {0: "the stem Conv2D", len(BLOCKS) + 1: "the final BatchNormalization", len(BLOCKS) + 2: "the SiLU Activation",
            len(BLOCKS) + 3: "the GlobalAveragePooling2D", len(BLOCKS) + 4: "the Dense head"}[i]
