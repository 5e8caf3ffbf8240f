"""Which ``keras.applications`` ResNet, and which head, a Keras file holds: from its names and
shapes (and the model description of a ``.keras`` / Keras 2 ``.h5``, ``formats/keras_config``).

Three namings occur, each read for what it is:
- Keras' own layer names (``conv2_block1_1_conv``, ``post_bn``, ``predictions``): in Keras 2 files,
  pickles of ``v.path``/``v.name``, a model's Keras 2 ``.h5``. Mapped by name.
- ResNet50's original names (``res2a_branch2a``, ``bn_conv1``, ``fc1000``), as in the first
  ImageNet files Keras published. Renamed to Keras' own, then mapped by name.
- Keras 3's ``.weights.h5`` / ``.keras`` name layers by class and count (``conv2d_48``,
  ``batch_normalization_3``) in the order of ``model.layers``: mapped by that order, kind by
  kind (convolutions, BatchNorms, Dense layers), every shape then checked. Keras itself loads
  those files by this order.
A file of another network is refused with what it holds, before any mapping.
"""
from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field

from ..errors import UserError
from .keras_names import BN, CONV, CONV_NO_BIAS, DENSE, VARIABLES, check_names, keras_path, layer_table
from .specs import FEATURES, SPECS, Dense, ResNetSpec

KERAS_LAYER = re.compile(r"conv1_(conv|bn)|conv[2-5]_block\d+_(preact_bn|[0-3]_(conv|bn))|post_bn|predictions")
ORIGINAL_LAYER = re.compile(r"(res|bn)([2-5])([a-z])_branch(1|2[abc])")
ORIGINAL_NAMES = {"conv1": "conv1_conv", "bn_conv1": "conv1_bn", "fc1000": "predictions"}
ORIGINAL_PARTS = {"1": "0", "2a": "1", "2b": "2", "2c": "3"}
SUPPORTED = "the course's ResNet and keras.applications' ResNet50/101/152 and ResNet50V2/101V2/152V2"
# Keras 3 names layers by class: these say which network a file of another one holds
OTHER_LAYERS = {"depthwise_conv2d": "DepthwiseConv2D", "separable_conv2d": "SeparableConv2D",
                "normalization": "Normalization", "rescaling": "Rescaling", "conv1d": "Conv1D", "conv3d": "Conv3D",
                "lstm": "LSTM", "embedding": "Embedding", "layer_normalization": "LayerNormalization"}


@dataclass
class Recognised:
    spec: ResNetSpec
    head: tuple[Dense, ...]
    pooling: str | None
    pairs: list[tuple[str, str]]  # (the file's Keras key, state-dict key), in the file's order
    naming: str  # how the file's names were read, for the report
    input_size: list[int] | None = None
    notes: list[str] = field(default_factory=list)  # what was assumed, for the report


def is_family(arrays) -> bool:
    """Whether the arrays hold a ResNet50-style stem: a 7x7 convolution of 3 channels into 64."""
    return any(getattr(a, "shape", None) == (7, 7, 3, 64) for a in arrays.values())


def group_layers(arrays) -> dict[str, dict[str, str]]:
    """{layer path: {variable: key}} in the file's order; every layer a Conv2D, BN or Dense."""
    layers: dict[str, dict[str, str]] = {}
    for key in arrays:
        layer, _, var = keras_path(key).rpartition("/")
        layers.setdefault(layer, {})[var] = key
    for layer, variables in layers.items():
        if kind_of(variables, arrays) is None:
            raise UserError(f"layer {layer!r} holds variables {sorted(variables)}: not a Conv2D, BatchNormalization "
                            f"or Dense of a keras.applications ResNet")
    return layers


def kind_of(variables: dict[str, str], arrays) -> str | None:
    for kind, names in VARIABLES.items():
        if set(variables) == set(names):
            kernel = variables.get("kernel")
            rank = arrays[kernel].ndim if kernel else None
            if kind in (CONV, CONV_NO_BIAS) and rank == 4 or kind == DENSE and rank == 2 or kind == BN:
                return kind
    return None


def keras_name(layer: str) -> str | None:
    """Keras' own name of a layer named by Keras or with ResNet50's original names; else None."""
    name = layer.rsplit("/", 1)[-1]
    if KERAS_LAYER.fullmatch(name):
        return name
    if name in ORIGINAL_NAMES:
        return ORIGINAL_NAMES[name]
    m = ORIGINAL_LAYER.fullmatch(name)
    if m:
        kind, stage, letter, part = m.groups()
        return f"conv{stage}_block{ord(letter) - ord('a') + 1}_{ORIGINAL_PARTS[part]}_{'conv' if kind == 'res' else 'bn'}"
    return None


def spec_named_by(layers) -> ResNetSpec:
    """The network whose blocks and version Keras' layer names spell (``conv4_block6_...``, ``post_bn``)."""
    blocks = tuple(max((int(m.group(1)) for n in layers if (m := re.match(rf"conv{s}_block(\d+)_", n))), default=0)
                   for s in range(2, 6))
    preact = any(n.endswith("preact_bn") or n == "post_bn" for n in layers)
    for spec in SPECS.values():
        if spec.blocks == blocks and spec.preact == preact:
            return spec
    raise UserError(f"a ResNet{' V2' if preact else ''} with {blocks} blocks in its four stages, which no "
                    f"keras.applications ResNet has; supported: {SUPPORTED}")


def spec_of(counts: Counter) -> ResNetSpec:
    """The network with these counts of layers of each kind."""
    for spec in SPECS.values():
        if Counter(kind for _, _, kind in layer_table(spec)) == counts:
            return spec
    found = ", ".join(f"{n} {k}" for k, n in sorted(counts.items()))
    raise UserError(f"a ResNet stem, then layers ({found}) that no keras.applications ResNet has; supported: "
                    f"{SUPPORTED}")


def recognise(arrays, description: dict | None = None, keras3: bool = False) -> Recognised:
    """The network and head in ``arrays`` (Keras key -> array); ``description``: what the file's
    model description says (``keras_config.family_description``); ``keras3``: class-count names."""
    layers = group_layers(arrays)
    kinds = {layer: kind_of(v, arrays) for layer, v in layers.items()}
    dense = [layer for layer in layers if kinds[layer] == DENSE]
    if keras3:
        dense.sort(key=natural_key)
    spec, naming, order = backbone_layers([layer for layer in layers if kinds[layer] != DENSE], kinds, keras3)
    if len(dense) == 1 and keras_name(dense[0]) == "predictions":
        head = (Dense(arrays[layers[dense[0]]["kernel"]].shape[1], "softmax", name="predictions"),)
    else:
        head = tuple(Dense(arrays[layers[layer]["kernel"]].shape[1], name=layer.rsplit("/", 1)[-1]) for layer in dense)
    rec = Recognised(spec, head, "avg" if head else None, [], naming)
    describe(rec, dense, arrays, layers, description)
    for layer, (name, module, kind) in zip([*order, *dense], layer_table(spec, rec.head)):
        if kinds[layer] != kind:
            raise UserError(f"layer {layer!r} holds {', '.join(sorted(layers[layer]))}, where {spec.name}'s {name} "
                            f"holds {', '.join(sorted(VARIABLES[kind]))}")
        rec.pairs += [(layers[layer][var], f"{module}.{param}") for var, param in VARIABLES[kind].items()]
    return rec


def backbone_layers(backbone: list[str], kinds: dict[str, str], keras3: bool) -> tuple[ResNetSpec, str, list[str]]:
    """(the network, how its names were read, the file's layers in Keras' order of the network's)."""
    named = {layer: keras_name(layer) for layer in backbone}
    if all(named.values()):  # Keras' own names, or ResNet50's original ones
        by_name = {name: layer for layer, name in named.items()}
        if len(by_name) < len(backbone):
            twice = next(n for n in by_name if list(named.values()).count(n) > 1)
            raise UserError(f"two layers are {twice!r} (by their names); not mapped")
        spec = spec_named_by(by_name)
        check_names(by_name, [name for name, _, _ in layer_table(spec)], f"layers of a {spec.name}")
        naming = "Keras' layer names" if all(n == layer.rsplit("/", 1)[-1] for layer, n in named.items()) \
            else "ResNet50's original layer names"
        return spec, naming, [by_name[name] for name, _, _ in layer_table(spec)]
    if any(named.values()):
        odd = next(layer for layer, name in named.items() if not name)
        raise UserError(f"layer {odd!r}: not a name of a keras.applications ResNet, where other layers have those "
                        f"names; not mapped")
    if keras3:  # Keras 3's class-count names (conv2d_9 before conv2d_10), in Keras' order of model.layers
        backbone = sorted(backbone, key=natural_key)
    spec = spec_of(Counter(kinds[layer] for layer in backbone))
    return spec, "the order of the file's layers (Keras 3 names layers by class)", by_kind(backbone, kinds,
                                                                                            layer_table(spec))


def by_kind(layers: list[str], kinds: dict[str, str], table) -> list[str]:
    """The file's layers in the table's order, the n-th of a kind taking the n-th place of it."""
    queues = {kind: [layer for layer in layers if kinds[layer] == kind] for kind in (CONV, CONV_NO_BIAS, BN)}
    return [queues[kind].pop(0) for _, _, kind in table]


def describe(rec: Recognised, dense: list[str], arrays, layers, description: dict | None) -> None:
    """The head's activations, dropout and pooling, and the input size: from the model description
    where the file has one (checked against the weights), else assumed and noted."""
    widths = [FEATURES] + [d.units for d in rec.head]
    for layer, (cin, cout) in zip(dense, zip(widths, widths[1:])):
        shape = arrays[layers[layer]["kernel"]].shape
        if shape[0] != cin:
            raise UserError(f"Dense {layer!r} has a kernel of shape {shape}; after {cin} features it takes ({cin}, "
                            f"units): its Dense layers do not follow one another from the 2048 pooled features")
    if description is None:
        if len(rec.head) > 1:
            rec.head = tuple(Dense(d.units, "relu" if i < len(rec.head) - 1 else "linear", name=d.name)
                             for i, d in enumerate(rec.head))
            rec.notes.append("the file records no activations: ReLU assumed between its Dense layers")
        if not rec.head:
            rec.notes.append("the file records no pooling: 'avg' assumed (global average of the feature map)")
            rec.pooling = "avg"
        return
    head = description.get("head", [])
    if [d["units"] for d in head] != [d.units for d in rec.head]:
        raise UserError(f"the model description has Dense layers of {[d['units'] for d in head]} units, the weights "
                        f"{[d.units for d in rec.head]}")
    rec.head = tuple(Dense(d.units, h["activation"], h["dropout"], str(h.get("name") or d.name))  # Keras' own name
                     for d, h in zip(rec.head, head))
    rec.pooling, rec.input_size = description.get("pooling"), description.get("input_size")


def natural_key(text: str):
    """'conv2d_9' before 'conv2d_10' ('residual_block_9' before 'residual_block_10'); a name
    without a number sorts first."""
    return [int(p) if p.isdigit() else p for p in re.split(r"(\d+)", text)]


def other_layers(names) -> list[str]:
    """The classes of other networks' layers that Keras 3's class-count names show (``depthwise_conv2d_3``)."""
    return sorted({OTHER_LAYERS[m.group(1)] for name in names for part in name.split("/")
                   if (m := re.fullmatch(r"([a-z0-9_]+?)(_\d+)?", part)) and m.group(1) in OTHER_LAYERS})


def other_network(arrays) -> str:
    """What a file of another network holds, in words (for its one-line refusal)."""
    classes = other_layers(arrays)
    kernels = sorted({a.shape[:2] for a in arrays.values() if getattr(a, "ndim", 0) == 4})
    what = f"{', '.join(classes)} layers" if classes else \
        f"convolutions of sizes {', '.join(f'{h}x{w}' for h, w in kernels)}" if kernels else "no convolution"
    guess = " (an EfficientNet, MobileNet or Xception?)" if {"DepthwiseConv2D", "SeparableConv2D"} & set(classes) else ""
    return f"another network: {what}{guess}; supported: {SUPPORTED}"
