"""Which keras.applications ResNet a file holds, from names and shapes alone (no Keras here: the
arrays are a PyTorch network's, in Keras' layouts and names; tests/test_applications_files.py
reads the files Keras itself writes): every naming read, and damaged names refused in one line."""
import random

import numpy as np
import pytest
import torch

from torch_resnet.applications import SPECS, build, torch_to_keras
from torch_resnet.applications.keras_files import recognise
from torch_resnet.applications.specs import Dense
from torch_resnet.conversion.applications import family_to_keras, fresh_keras3_layout, recognised_model
from torch_resnet.conversion.convert import state_dict_to_keras
from torch_resnet.errors import UserError
from torch_resnet.formats.keras_containers import KerasFile
from torch_resnet.formats.keras_h5 import VARIABLES


def keras_arrays(name, **options):
    torch.manual_seed(0)
    model = build(name, **options)
    return model, torch_to_keras(model.state_dict(), name)


def keras3_file(model) -> KerasFile:
    """The model as read_keras3 reads Keras 3's save_weights of it: layers named by class and count
    (``layers/conv2d_5/kernel``), listed in no particular order (HDF5 lists them by name)."""
    pairs, _ = fresh_keras3_layout(model)
    values = state_dict_to_keras(model.state_dict(), [(p, t, "float32") for p, t in pairs])
    by_layer = {}
    for path, value in values.items():
        by_layer.setdefault(path.rpartition("/vars/")[0], []).append(value)
    arrays = {f"{layer}/{var}": value for layer, found in by_layer.items()
              for var, value in zip(VARIABLES[tuple(v.ndim for v in found)], found)}
    shuffled = dict(random.Random(0).sample(list(arrays.items()), len(arrays)))
    return KerasFile("Keras 3 .weights.h5", shuffled, {k: k for k in shuffled})


@pytest.mark.parametrize("name", list(SPECS))
def test_each_network_is_told_apart_by_its_names_and_by_its_counts(name):
    model, arrays = keras_arrays(name, classes=7)
    rec = recognise(arrays)
    assert (rec.spec.name, [d.units for d in rec.head], rec.naming) == (name, [7], "Keras' layer names")
    converted, _ = recognised_model(keras3_file(model), "x.weights.h5")  # by Keras' order, kind by kind
    assert converted.spec.name == name and converted.keras_names.record()["format"] == "Keras 3 .weights.h5"
    state = model.state_dict()
    assert all(torch.equal(state[k], v) for k, v in converted.state_dict().items())


def test_a_user_head_is_read_as_dense_layers_that_follow_one_another():
    model = build("ResNet50", include_top=False, head=(Dense(1024, "relu"), Dense(200, name="dense_1")))
    arrays, _, _ = family_to_keras(model, h5=False)  # Keras' own names: dense, dense_1 after the ResNet's
    rec = recognise(arrays)
    assert [(d.units, d.activation) for d in rec.head] == [(1024, "relu"), (200, "linear")]
    assert rec.notes == ["the file records no activations: ReLU assumed between its Dense layers"]
    swapped = {k.replace("dense_1/", "dense_x/").replace("dense/", "dense_1/").replace("dense_x/", "dense/"): v
               for k, v in arrays.items()}  # the layers listed in the other order: 2048 -> 200 first
    with pytest.raises(UserError, match="do not follow one another"):
        recognise(dict(sorted(swapped.items(), key=lambda kv: not kv[0].startswith("dense/"))))


@pytest.mark.parametrize("name", ["ResNet50", "ResNet50V2"])
def test_damaged_names_and_shapes_are_refused_in_one_line(name):
    """300 seeded damages (a tensor gone, renamed, reshaped, an odd layer, a BN where a conv was):
    each is refused with a one-line UserError, never another exception, never converted."""
    _, base = keras_arrays(name, classes=10)
    rng, keys = random.Random(1), list(base)
    for case in range(300):
        arrays = dict(base)
        for _ in range(rng.randint(1, 3)):
            op, key = rng.random(), rng.choice(keys)
            if op < 0.3:
                arrays.pop(key, None)
            elif op < 0.5:
                arrays[key + "x"] = arrays.pop(key, np.zeros(3, np.float32))
            elif op < 0.7:
                arrays[key] = np.zeros((rng.randint(1, 4),) * rng.randint(1, 4), np.float32)
            elif op < 0.8:
                arrays["layers/conv2d_7/kernel"] = np.zeros((1, 1, 2, 2), np.float32)
            else:
                arrays[key.replace("conv", "bn", 1)] = base[key]
        with pytest.raises(UserError) as refused:
            recognised_model(KerasFile("Keras pickle", arrays), "f.pkl")
        assert len(str(refused.value).splitlines()) == 1, (case, str(refused.value))
