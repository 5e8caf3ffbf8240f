"""Keras 3 variable paths of a ``keras.applications`` ResNet <-> state-dict keys of ``KerasResNet``.

The Keras names are fixed by Keras' own source (``conv2_block1_1_conv``, ``post_bn``,
``predictions``), so the table is generated from the spec, not guessed from the names: every
Keras variable lands on exactly one PyTorch tensor and back. Keras 2 names (``conv1_conv/kernel:0``,
as in Keras' own ImageNet files) are read too. Layouts: conv kernel HWIO <-> OIHW, Dense kernel
(in, out) <-> Linear weight (out, in); vectors keep theirs. The name table imports no torch.
"""
from __future__ import annotations

import re

import numpy as np

from ..errors import UserError
from .specs import ResNetSpec, head_indices, spec_named, top

CONV, CONV_NO_BIAS, BN, DENSE = "conv", "conv_no_bias", "bn", "dense"
# Keras variable -> PyTorch parameter or buffer, by layer kind
VARIABLES = {
    CONV: {"kernel": "weight", "bias": "bias"},
    CONV_NO_BIAS: {"kernel": "weight"},
    BN: {"gamma": "weight", "beta": "bias", "moving_mean": "running_mean", "moving_variance": "running_var"},
    DENSE: {"kernel": "weight", "bias": "bias"},
}
TO_TORCH_AXES = {4: (3, 2, 0, 1), 2: (1, 0)}  # HWIO -> OIHW; (in, out) -> (out, in)
TO_KERAS_AXES = {4: (2, 3, 1, 0), 2: (1, 0)}
PREDICTIONS = "predictions"


# The layers of a block, in the order of Keras' ``model.weights`` (the Functional's topological
# order, which puts the shortcut between the branch's layers); the ``0_`` ones (the projection
# shortcut) only in a stage's first block.
BLOCK_V1 = [("1_conv", "conv1", CONV), ("1_bn", "bn1", BN), ("2_conv", "conv2", CONV), ("2_bn", "bn2", BN),
            ("0_conv", "shortcut_conv", CONV), ("3_conv", "conv3", CONV), ("0_bn", "shortcut_bn", BN),
            ("3_bn", "bn3", BN)]
BLOCK_V2 = [("preact_bn", "preact_bn", BN), ("1_conv", "conv1", CONV_NO_BIAS), ("1_bn", "bn1", BN),
            ("2_conv", "conv2", CONV_NO_BIAS), ("2_bn", "bn2", BN), ("0_conv", "shortcut_conv", CONV),
            ("3_conv", "conv3", CONV)]


def block_layers(spec: ResNetSpec, keras_block: str, torch_block: str, first: bool) -> list[tuple[str, str, str]]:
    """(Keras layer, PyTorch module, kind) of one bottleneck block; ``first``: with the projection."""
    return [(f"{keras_block}_{k}", f"{torch_block}.{t}", kind) for k, t, kind in (BLOCK_V2 if spec.preact else BLOCK_V1)
            if first or not k.startswith("0_")]


def layer_table(spec: ResNetSpec | str, head=()) -> list[tuple[str, str, str]]:
    """Every weighted layer of the Keras model, in Keras' order: (Keras layer, PyTorch module, kind);
    ``head``: the Dense layers on top (``specs.Dense``; ``specs.top(classes)`` for Keras' own)."""
    spec = spec_named(spec)
    table = [("conv1_conv", "backbone.stem.conv", CONV)]
    if not spec.preact:
        table.append(("conv1_bn", "backbone.stem.bn", BN))
    for stage, blocks in enumerate(spec.blocks):
        for b in range(blocks):
            table += block_layers(spec, f"conv{stage + 2}_block{b + 1}", f"backbone.stages.{stage}.{b}", b == 0)
    if spec.preact:
        table.append(("post_bn", "backbone.post_bn", BN))
    table += [(dense.name, f"head.{i}", DENSE) for dense, i in zip(head, head_indices(head))]
    return table


def name_table(spec: ResNetSpec | str, include_top: bool = False, head=None) -> dict[str, str]:
    """Keras variable path (``conv2_block1_1_bn/moving_mean``) -> state-dict key, in Keras' order;
    with Keras' top (``include_top``, any number of classes) or the Dense layers ``head``."""
    head = head if head is not None else top(0) if include_top else ()
    return {f"{layer}/{var}": f"{module}.{param}" for layer, module, kind in layer_table(spec, head)
            for var, param in VARIABLES[kind].items()}


def keras_path(key: str) -> str:
    """A Keras 3 path from a Keras 2 name: ``conv1_conv/kernel:0`` -> ``conv1_conv/kernel``."""
    return re.sub(r":\d+$", "", key)


def check_names(given, expected, what: str) -> None:
    """Refuse names that are not exactly the expected ones: the first difference, then the rest."""
    missing = [k for k in expected if k not in given]
    unknown = [k for k in given if k not in expected]
    if missing or unknown:
        lines = [f"{what}: no {k!r}" for k in missing] + [f"{what}: unexpected {k!r}" for k in unknown]
        raise UserError(lines[0], lines[1:])


def keras_to_torch(arrays: dict[str, np.ndarray], spec: ResNetSpec | str) -> dict:
    """{Keras path: array} of ``keras.applications.<spec>`` -> a state dict for ``KerasResNet``
    (strict: every name must be there, nothing else); with the top if ``predictions`` is there."""
    import torch  # here: the name table above stays usable without torch

    spec = spec_named(spec)
    arrays = {keras_path(k): v for k, v in arrays.items()}
    table = name_table(spec, include_top=f"{PREDICTIONS}/kernel" in arrays)
    check_names(arrays, table, f"Keras weights of {spec.name}")
    state = {}
    for path, key in table.items():
        array = np.asarray(arrays[path])
        if array.ndim in TO_TORCH_AXES:
            array = array.transpose(TO_TORCH_AXES[array.ndim])
        state[key] = torch.from_numpy(np.ascontiguousarray(array))
        if key.endswith(".running_var"):  # what strict loading wants of every BatchNorm
            state[key.replace("running_var", "num_batches_tracked")] = torch.tensor(0)
    return state


def torch_to_keras(state: dict, spec: ResNetSpec | str) -> dict[str, np.ndarray]:
    """The way back: a ``KerasResNet`` state dict -> {Keras 3 path: array} in Keras' order and
    layouts, for ``keras.applications.<spec>(weights=None, ...)``."""
    spec = spec_named(spec)
    table = name_table(spec, include_top="head.0.weight" in state)
    by_key = {key: path for path, key in table.items()}
    given = [k for k in state if not k.endswith("num_batches_tracked")]  # a counter Keras has no variable for
    check_names(given, by_key, f"state dict of {spec.name}")
    arrays = {}
    for path, key in table.items():
        array = state[key].detach().cpu().numpy()
        if array.ndim in TO_KERAS_AXES:
            array = array.transpose(TO_KERAS_AXES[array.ndim])
        arrays[path] = np.ascontiguousarray(array)
    return arrays
