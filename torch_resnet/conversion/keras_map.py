"""Which Keras variable is which PyTorch tensor.

Keras names are not a format (docs/keras.md): Keras 3 paths (``sequential_3/residual_block_9/conv2d_23/kernel``),
Keras 2 names (``residual_block_9/conv2d_23/kernel:0``), any prefix, any starting number, and layer
numbers that follow the order in which an author created layers. So the mapping reads the names
only for structure, never for exact spelling:

- the last component is the variable (kernel, bias, gamma, beta, moving_mean, moving_variance),
  the one before it the layer; the variables of one layer say what it is (bias-free conv,
  Dense, BatchNormalization);
- a common prefix of all paths (the model's name) is dropped; what is left above a layer is its
  block, blocks are ordered by their number (numerically, not as strings);
- inside a block the 1x1 kernel is the shortcut; of the two BNs and the two 3x3 convs, the shapes
  say which is first where they differ (a block that changes the width), else the names must spell
  an order: Keras' numbering (``conv2d``, ``conv2d_1``; ``batch_normalization_25``, ``_26``) or an
  author's (``bn1``/``bn2``, ``conv_a``/``conv_b``). Names that spell none are refused, not guessed.
  Without block components, layers are taken in creation order, block by block.
- a ``layers`` component is Keras 3's list of a model's layers in a weights file
  (``layers/residual_block_3/layers/conv2d_2``), not a level of blocks.

Every Keras tensor must land on exactly one model tensor and every model tensor must be filled.
What does not fit is reported in full: every unreadable name, odd layer and odd block at once.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field

import numpy as np

from ..applications.keras_files import natural_key  # one numeric-aware sort for every Keras name
from ..errors import Problems, UserError
from ..model import BLOCKS, FEATURES

CONV, BN, DENSE = "Conv2D", "BatchNormalization", "Dense"
_LAYER_VARS = {
    CONV: ("kernel",),
    BN: ("gamma", "beta", "moving_mean", "moving_variance"),
    DENSE: ("kernel", "bias"),
}
_TORCH_SUFFIX = {"kernel": "weight", "bias": "bias", "gamma": "weight", "beta": "bias",
                 "moving_mean": "running_mean", "moving_variance": "running_var"}
# Kernel layouts, by rank: conv HWIO -> OIHW, Dense (in, out) -> Linear (out, in). Every other
# variable (BatchNorm's four, the Dense bias) is a vector and keeps its layout.
TO_TORCH_AXES = {4: (3, 2, 0, 1), 2: (1, 0)}
TO_KERAS_AXES = {rank: tuple(np.argsort(axes)) for rank, axes in TO_TORCH_AXES.items()}


def relayout(array: np.ndarray, axes: dict) -> np.ndarray:
    """``array`` in the other framework's layout: ``axes`` is TO_TORCH_AXES or TO_KERAS_AXES."""
    return array.transpose(axes[array.ndim]) if array.ndim in axes else array


@dataclass
class Layer:
    path: tuple[str, ...]  # components above the variable name
    kind: str
    variables: dict[str, str]  # variable name -> full Keras key

    @property
    def name(self) -> str:
        return "/".join(self.path)

    def shape(self, arrays, var="kernel"):
        return arrays[self.variables[var]].shape


def _split_key(key: str) -> tuple[tuple[str, ...], str]:
    parts = [p for p in re.sub(r":\d+$", "", key).split("/") if p]
    if len(parts) < 2:
        raise UserError(f"cannot read Keras name {key!r}: expected '<layer>/<variable>' with optional prefixes")
    if parts[-1] not in _TORCH_SUFFIX:
        raise UserError(f"tensor {key!r}: unknown variable {parts[-1]!r} "
                        f"(expected one of {', '.join(sorted(_TORCH_SUFFIX))})")
    return tuple(parts[:-1]), parts[-1]


def _group_layers(arrays: dict[str, np.ndarray]) -> list[Layer]:
    by_path: dict[tuple[str, ...], dict[str, str]] = {}
    problems = Problems()
    for key in arrays:
        with problems.each():
            path, var = _split_key(key)
            if var in by_path.setdefault(path, {}):
                raise UserError(f"tensors {by_path[path][var]!r} and {key!r} are the same Keras variable")
            by_path[path][var] = key
    layers = []
    for path, variables in by_path.items():
        with problems.each():
            layers.append(_layer(path, variables, arrays))
    problems.check()
    return layers


def _layer(path: tuple[str, ...], variables: dict[str, str], arrays) -> Layer:
    """What one Keras layer is, from the variables it has."""
    names = set(variables)
    if names == {"kernel"}:
        kind = CONV
    elif names == {"kernel", "bias"}:
        kind = DENSE if arrays[variables["kernel"]].ndim == 2 else "Conv2D with bias"
    elif names <= set(_LAYER_VARS[BN]):
        missing = [v for v in _LAYER_VARS[BN] if v not in names]
        if missing:
            raise UserError(f"BatchNormalization {'/'.join(path)!r} lacks {', '.join(missing)}")
        kind = BN
    else:
        kind = None
    if kind not in _LAYER_VARS:
        raise UserError(f"layer {'/'.join(path)!r} has variables {sorted(names)}: not a bias-free "
                        f"convolution, a Dense or a BatchNormalization of this network")
    if kind == CONV and arrays[variables["kernel"]].ndim != 4:
        raise UserError(f"tensor {variables['kernel']!r}: a kernel without bias must be a 4-d conv "
                        f"kernel, got shape {arrays[variables['kernel']].shape}")
    return Layer(path, kind, variables)


def _model_slots() -> list[tuple[str, str, int | None, str]]:
    """The model's layers in Keras creation order: (torch prefix, kind, block index or None, role)."""
    slots = [("backbone.stem", CONV, None, "stem")]
    for i, (cin, cout, _) in enumerate(BLOCKS):
        p = f"backbone.blocks.{i}"
        slots += [(f"{p}.bn1", BN, i, "bn1"), (f"{p}.conv1", CONV, i, "conv1"),
                  (f"{p}.bn2", BN, i, "bn2"), (f"{p}.conv2", CONV, i, "conv2")]
        if cin != cout:
            slots.append((f"{p}.shortcut", CONV, i, "shortcut"))
    slots += [("backbone.bn", BN, None, "final"), ("head", DENSE, None, "head")]
    return slots


def spelled_order(a: str, b: str) -> bool | None:
    """Whether the name ``a`` comes before ``b`` in an order the names spell: the same words but
    one number or one letter (bn1/bn2, conv_a/conv_b, conv2d_23/conv2d_24), or Keras' first name
    and a numbered one (conv2d/conv2d_1). None where they spell no order (pre_bn/post_bn)."""
    ta, tb = (re.findall(r"\d+|[^\W\d_]+", n.lower()) for n in (a, b))
    if len(ta) != len(tb):
        short, long_ = sorted((ta, tb), key=len)
        if len(long_) == len(short) + 1 and long_[:-1] == short and long_[-1].isdigit():
            return ta is short
        return None
    differ = [(x, y) for x, y in zip(ta, tb) if x != y]
    if len(differ) != 1:
        return None
    x, y = differ[0]
    if x.isdigit() and y.isdigit() and int(x) != int(y):
        return int(x) < int(y)
    if len(x) == len(y) == 1 and x.isalpha() and y.isalpha():
        return x < y
    return None


def _in_order(pair: list[Layer], shapes, var: str, label: str, arrays) -> tuple[Layer, Layer]:
    """A block's two BatchNormalizations (or 3x3 convolutions) as (first, second) in the network:
    by ``shapes`` (the two roles' shapes) where they tell, else by the order the names spell."""
    a, b = pair
    got = (a.shape(arrays, var), b.shape(arrays, var))
    if shapes[0] != shapes[1] and set(got) == set(shapes):
        return (a, b) if got[0] == shapes[0] else (b, a)
    first = spelled_order(a.path[-1], b.path[-1])
    if first is None:
        raise UserError(f"block {label}: cannot tell which of {a.name!r} and {b.name!r} comes first: the same "
                        f"shape {got[0]}, and names that spell no order (such as bn1/bn2, conv_a/conv_b, "
                        f"or Keras' own conv2d/conv2d_1)")
    return (a, b) if first else (b, a)


def _assign_block(block: list[Layer], i: int, label: str, arrays) -> dict[str, Layer]:
    """Roles inside one block: the 1x1 conv is the shortcut, BNs and 3x3 convs by _in_order."""
    cin, cout, _ = BLOCKS[i]
    bns = [l for l in block if l.kind == BN]
    convs = [l for l in block if l.kind == CONV]
    shortcuts = [c for c in convs if c.shape(arrays)[:2] == (1, 1)]
    convs3 = [c for c in convs if c not in shortcuts]
    want_sc = int(cin != cout)
    others = [l for l in block if l.kind not in (BN, CONV)]
    if len(bns) != 2 or len(convs3) != 2 or len(shortcuts) != want_sc or others:
        found = ", ".join(l.name for l in block)
        raise UserError(f"block {label} (#{i + 1}, {cin}->{cout} channels) should hold 2 BatchNormalization, "
                        f"2 3x3 and {want_sc} 1x1 convolutions; it holds: {found}")
    roles = dict(zip(("bn1", "bn2"), _in_order(bns, [(cin,), (cout,)], "gamma", label, arrays)))
    roles.update(zip(("conv1", "conv2"), _in_order(convs3, [(3, 3, cin, cout), (3, 3, cout, cout)], "kernel",
                                                   label, arrays)))
    if want_sc:
        roles["shortcut"] = shortcuts[0]
    return roles


def _assign_layers(layers: list[Layer], arrays) -> dict[str, Layer]:
    """torch prefix -> Keras layer, for every layer of the model."""
    common = layers[0].path[:-1]
    for l in layers:
        n = 0
        while n < min(len(common), len(l.path) - 1) and common[n] == l.path[n]:
            n += 1
        common = common[:n]
    block_of = {id(l): "/".join(c for c in l.path[len(common):-1] if c != "layers") for l in layers}
    top = [l for l in layers if not block_of[id(l)]]
    block_names = sorted({b for b in block_of.values() if b}, key=natural_key)

    roles_by_block: list[dict[str, Layer]] = []
    problems = Problems()
    if block_names:
        if len(block_names) != len(BLOCKS):
            raise UserError(f"found {len(block_names)} residual blocks ({', '.join(block_names)}); "
                            f"the network has {len(BLOCKS)}")
        for i, b in enumerate(block_names):
            with problems.each():
                roles_by_block.append(_assign_block([l for l in layers if block_of[id(l)] == b], i, b, arrays))
        stems = [l for l in top if l.kind == CONV]
        finals = [l for l in top if l.kind == BN]
    else:  # flat names: everything in creation order, blocks consumed one after the other
        convs = sorted((l for l in top if l.kind == CONV), key=lambda l: natural_key(l.path[-1]))
        bns = sorted((l for l in top if l.kind == BN), key=lambda l: natural_key(l.path[-1]))
        stems, finals = convs[:1], bns[-1:]
        convs, bns = convs[1:], bns[:-1]
        for i, (cin, cout, _) in enumerate(BLOCKS):
            n_conv = 3 if cin != cout else 2
            block, convs, bns = convs[:n_conv] + bns[:2], convs[n_conv:], bns[2:]
            with problems.each():
                roles_by_block.append(_assign_block(block, i, f"of layers {', '.join(l.name for l in block)}",
                                                    arrays))
        top = [l for l in top if l.kind == DENSE] + stems + finals + convs + bns
    heads = [l for l in top if l.kind == DENSE]
    for what, found in (("stem convolution", stems), ("final BatchNormalization", finals), ("Dense head", heads)):
        if len(found) != 1:
            problems.add(f"expected 1 {what} outside the residual blocks, found {len(found)}"
                         + (f": {', '.join(l.name for l in found)}" if found else ""))
    for extra in [l for l in top if l not in stems + finals + heads]:
        problems.add(f"layer {extra.name!r} ({extra.kind}) does not belong to this network")
    problems.check()

    assigned = {}
    for prefix, kind, block, role in _model_slots():
        if block is not None:
            assigned[prefix] = roles_by_block[block][role]
        else:
            assigned[prefix] = {"stem": stems, "final": finals, "head": heads}[role][0]
    return assigned


@dataclass
class Mapping:
    num_classes: int
    pairs: list[tuple[str, str]]  # (Keras key, torch key), in the Keras dict's order
    summary: list[str] = field(default_factory=list)  # what the report says about the network


def map_keras_names(arrays: dict[str, np.ndarray]) -> Mapping:
    """Work out which Keras tensor fills which ``ResidualNetwork`` tensor; fail on anything else."""
    if not arrays:
        raise UserError("the weights dict is empty")
    assigned = _assign_layers(_group_layers(arrays), arrays)
    head = assigned["head"]
    kshape = head.shape(arrays)
    if kshape[0] != FEATURES:
        raise UserError(f"tensor {head.variables['kernel']!r}: Dense kernel has shape {kshape}, "
                        f"expected ({FEATURES}, num_classes)")
    torch_of = {}
    for prefix, layer in assigned.items():
        for var, key in layer.variables.items():
            torch_of[key] = f"{prefix}.{_TORCH_SUFFIX[var]}"
    return Mapping(num_classes=int(kshape[1]), pairs=[(k, torch_of[k]) for k in arrays])


def default_keras_names(num_classes: int, model_name: str = "sequential") -> list[tuple[str, str]]:
    """(Keras 3 path, torch key) for a fresh Keras 3 session building the reference model
    (``torch_resnet.keras_model``): layers numbered from 0, shortcut conv created last."""
    counters: dict[str, int] = {}

    def auto_name(base):
        n = counters.get(base, 0)
        counters[base] = n + 1
        return base if n == 0 else f"{base}_{n}"

    layer_base = {CONV: "conv2d", BN: "batch_normalization", DENSE: "dense"}
    pairs, block_name = [], None
    for prefix, kind, block, role in _model_slots():
        if role == "bn1":
            block_name = auto_name("residual_block")
        scope = [model_name] + ([block_name] if block is not None else [])
        layer = auto_name(layer_base[kind])
        for var in _LAYER_VARS[kind]:
            pairs.append(("/".join(scope + [layer, var]), f"{prefix}.{_TORCH_SUFFIX[var]}"))
    return pairs



def keras3_h5_layout(num_classes: int) -> tuple[list[tuple[str, str]], list[str]]:
    """How Keras 3's ``save_weights`` lays out ``keras_model.build(num_classes)``: (dataset path,
    torch key) for every variable, and the groups of the layers without variables. Keras names
    a model's layers by class (``conv2d``, ``residual_block_1``), a block's by attribute (``bn1``),
    and the shortcut, which sorts after the block's ``layers`` list, as the block's third Conv2D."""
    top = {"stem": "conv2d", "final": "batch_normalization", "head": "dense"}
    pairs, groups = [], ["vars", "layers/activation/vars", "layers/global_average_pooling2d/vars"]
    for prefix, kind, block, role in _model_slots():
        if block is None:
            layer = f"layers/{top[role]}"
        else:
            scope = "layers/residual_block" + (f"_{block}" if block else "")
            layer = f"{scope}/layers/conv2d_2" if role == "shortcut" else f"{scope}/{role}"
            if role == "bn1":
                groups += [f"{scope}/vars", f"{scope}/act1/vars", f"{scope}/act2/vars"]
        pairs += [(f"{layer}/vars/{n}", f"{prefix}.{_TORCH_SUFFIX[var]}") for n, var in enumerate(_LAYER_VARS[kind])]
    return pairs, groups
