"""Keras files of a ``keras.applications`` ResNet (with its top, a head of the user's, or none)
-> ``KerasResNet``, and back: the family's side of ``convert.py``."""
from __future__ import annotations

import numpy as np

from ..applications.keras_files import Recognised, recognise
from ..applications.keras_names import VARIABLES, check_names, layer_table
from ..applications.resnet import KerasResNet
from ..errors import UserError
from ..formats.keras_containers import KerasFile
from ..formats.keras_names import NAMES_HINT, KerasNames
from .keras_map import Mapping


def recognised_model(keras: KerasFile, source) -> tuple[KerasResNet, Mapping]:
    """The network in a Keras file of the family, its tensors filled and checked, carrying its
    Keras names (and a Keras 3 file's structure) for the way back; the Mapping for the report."""
    from .convert import fill  # the same checks as the course network's, in one place

    try:
        rec = recognise(keras.arrays, keras.description, keras3=bool(keras.h5_paths))
    except UserError as e:
        raise UserError(f"{source}: {e.lines()[0]}", e.more) from None
    model = KerasResNet(rec.spec, pooling=rec.pooling, head=rec.head, input_size=rec.input_size)
    fill(model.state_dict(), keras.arrays, rec.pairs)
    names = {"source": str(source), "format": keras.kind, "num_classes": model.num_classes,
             "network": model.architecture, "tensors": [[k, t, str(keras.arrays[k].dtype)] for k, t in rec.pairs]}
    if keras.h5_paths:
        names["keras3_h5"] = {"tensors": [[keras.h5_paths[k], t, str(keras.arrays[k].dtype)] for k, t in rec.pairs],
                              "groups": keras.h5_groups}
    model.keras_names = KerasNames.of(names, f"the Keras names of {source}")
    return model, Mapping(model.num_classes or 0, rec.pairs, summary(model, rec))


def summary(model: KerasResNet, rec: Recognised) -> list[str]:
    """What the report says about the network: which, with what on top, read how, assumed what."""
    head = ", ".join((f"Dropout({d.dropout:g}), " if d.dropout else "") + f"Dense({d.units}"
                     + (f", {d.activation})" if d.activation != "linear" else ")") for d in model.head_layers)
    lines = [f"network: {model.spec.name}" + (f" + {head}" if head else " without a top")
             + f", pooling {model.pooling}; names read by {rec.naming}",
             f"inputs: Keras' preprocess_input of {model.spec.name} ('{model.preprocess}'), recorded with the weights"]
    if model.head_layers and model.head_layers[-1].activation == "softmax":
        lines.append("the final softmax is left out: the network gives logits (what PyTorch's losses take)")
    return lines + [f"assumed: {note}" for note in rec.notes]


def fresh_keras3_layout(model: KerasResNet) -> tuple[list[tuple[str, str]], list[str]]:
    """(dataset path, state-dict key) of ``keras.applications.<name>`` (with the model's Dense layers
    after the pooling, as in ``Model(resnet.input, outputs)``) saved by Keras 3's ``save_weights``:
    layers named by class and count in ``model.layers`` order (``layers/conv2d_5/vars/0``)."""
    counts: dict[str, int] = {}
    pairs = []
    for _, module, kind in layer_table(model.spec, model.head_layers):
        base = {"bn": "batch_normalization", "dense": "dense"}.get(kind, "conv2d")
        n = counts.get(base, 0)
        counts[base] = n + 1
        layer = f"layers/{base}" + (f"_{n}" if n else "")
        pairs += [(f"{layer}/vars/{i}", f"{module}.{param}") for i, param in enumerate(VARIABLES[kind].values())]
    return pairs, ["vars"]


def family_to_keras(model: KerasResNet, h5: bool, use_source_names: bool = True):
    """(Keras-named arrays, the Keras 3 file's groups (``h5``) or None, where the names came from):
    the source file's names, dtypes and structure where the network carries them (a weights file from
    a Keras 3 file, a pickle from a pickle), else fresh ones: ``fresh_keras3_layout`` in a weights
    file; in a pickle Keras' own variable paths (``v.path`` of keras.applications.NAME, or of
    ``Model(resnet.input, head)``: ``conv1_conv/kernel``, ``dense/kernel``), as Keras assigns by path."""
    from .convert import state_dict_to_keras

    record = model.keras_names.record() if use_source_names and model.keras_names is not None else {}
    where = model.keras_names.where if record else None
    layout = record.get("keras3_h5") if h5 else record if record.get("format") == "Keras pickle" else None
    names, groups = (checked_layout(layout, h5, where) if layout else (None, None))
    state_keys = {k for k in model.state_dict() if not k.endswith("num_batches_tracked")}
    if names is not None and {t for _, t, _ in names} != state_keys:
        names = None  # a new head (fine-tuning): the source file's structure no longer fits
    if names is None:
        where = None
        if h5:
            pairs, groups = fresh_keras3_layout(model)
        else:
            pairs, groups = [(f"{layer}/{var}", f"{module}.{param}") for layer, module, kind in
                             layer_table(model.spec, model.head_layers) for var, param in VARIABLES[kind].items()], None
        names = [(k, t, "float32") for k, t in pairs]
    state = model.state_dict()
    check_names([t for _, t, _ in names], [k for k in state if not k.endswith("num_batches_tracked")],
                f"{where or 'the network'}: its Keras names")
    return state_dict_to_keras(state, names), groups, where


def checked_layout(layout, h5: bool, where: str):
    """(names, groups) of a names record: (Keras name, torch key, floating dtype) triples and, for a
    Keras 3 file, its groups; a record this project did not write is one line."""
    names, groups = layout.get("tensors") if isinstance(layout, dict) else None, None
    try:
        names = [tuple(t) for t in names]
        ok = all(len(t) == 3 and all(isinstance(s, str) for s in t) and np.issubdtype(np.dtype(t[2]), np.floating)
                 for t in names)
    except (TypeError, ValueError):  # not a list, not triples, not a dtype
        ok = False
    if h5:
        groups = layout.get("groups") if isinstance(layout, dict) else None
        ok = ok and isinstance(groups, list) and all(isinstance(g, str) for g in groups)
    if not ok:
        raise UserError(f"{where}: not a Keras names file written by the converter; {NAMES_HINT}")
    return names, groups
