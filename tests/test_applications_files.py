"""Files of keras.applications ResNets, written by Keras itself (tests/make_keras_applications.py
--files, --seed-head, --others, in a child process): every format converts with Keras' logits,
with Keras' top and with the course's own head (Sequential and Functional); the way back loads
into keras.applications' model and into the user's; other networks and unsupported heads are
refused in one line."""
import pickle

import h5py
import numpy as np
import pytest
import torch

from conftest import FIGURES, assert_refused, call_script
from torch_resnet.applications.keras_files import keras_name
from torch_resnet.formats.files import load_model
from torch_resnet.model import count_parameters, images_to_input, summary

pytestmark = [pytest.mark.keras, pytest.mark.slow]

TOL = 1e-4  # of max |logit| (fp32)
NETWORKS = ("ResNet50", "ResNet50V2")
FORMATS = (".keras", ".weights.h5", ".h5", "_imagenet_layout.h5")
SEED_FILES = ("seed_sequential.keras", "seed_functional.keras", "seed_sequential.weights.h5",
              "seed_functional.weights.h5")
CONVERTER, EXPORTER = "convert/keras_pickle_to_pt.py", "convert/pt_to_keras_pickle.py"


@pytest.fixture(scope="module")
def keras_files(keras_applications):
    return keras_applications


def outputs_of(child, file):
    """(the folder's Keras outputs for ``file``: inputs ``x`` NHWC and ``logits``, their npz path)."""
    name = "seed" if file.startswith("seed_") else file.split(".")[0].removesuffix("_imagenet_layout")
    child.wait_for("seed head" if name == "seed" else name)
    path = child.folder / f"{name}_outputs.npz"
    with np.load(path) as saved:
        return {k: saved[k] for k in saved.files}, path


def gap(model, x_nhwc, reference):
    with torch.no_grad():
        ours = model.eval()(torch.from_numpy(x_nhwc).permute(0, 3, 1, 2).contiguous()).numpy()
    return float(np.abs(ours - reference).max()), float(np.abs(reference).max())


def convert(capsys, source, out, *options):
    rc, stdout, stderr = call_script(capsys, CONVERTER, source, "-o", out, *options)
    assert rc == 0, stderr
    return stdout


@pytest.mark.parametrize("file", [n + f for n in NETWORKS for f in FORMATS] + list(SEED_FILES))
def test_every_keras_file_converts_with_keras_logits(keras_files, file, tmp_path, capsys):
    ref, _ = outputs_of(keras_files, file)
    out = tmp_path / "converted.safetensors"
    said = convert(capsys, keras_files.folder / file, out)
    network = "ResNet50" if file.startswith("seed_") else file.split(".")[0].removesuffix("_imagenet_layout")
    assert f"network: {network} " in said and f"preprocess_input of {network}" in said, said
    if file.startswith("seed_"):  # the head: its Dropout and softmax known from a model description only
        head = "Dense(1024, relu), Dropout(0.4), Dense(200, softmax)" if file.endswith(".keras") else \
            "Dense(1024, relu), Dense(200)"
        assert head in said and ("the final softmax is left out" in said) == file.endswith(".keras"), said
        assert ("ReLU assumed" in said) == file.endswith(".weights.h5"), said
    model = load_model(out)
    assert model.preprocess == ("tf" if network.endswith("V2") else "caffe")
    if file.startswith("seed_"):  # Keras' summary of the course's model: the ResNet, then the Dense layers
        table = summary(model)
        assert "resnet50 (Functional)" in table and table.count("(Dense)") == 2, table
        assert count_parameters(model)["total"] == int(ref["params"]) and f"{int(ref['params']):,}" in table
    dlogit, logit = gap(model, ref["x"], ref["logits"])
    FIGURES.append((f"applications file {file}", f"max|dlogit| {dlogit:.2e} (max|logit| {logit:.2f})"))
    assert logit > 0.1 and dlogit <= TOL * logit


# (source file, exported file, the Keras model that loads it, whether the names are fresh ones):
# the source file's own structure, fresh keras.applications structure (a Keras 2 source), Keras'
# own variable paths in a pickle (Keras' top by its own name from a .keras), and the course's model
# with its head (Sequential from its .keras; Functional in a pickle, the head's names those a
# weights file cannot tell: dense, dense_1, as a fresh Keras session names them)
EXPORTS = [("ResNet50V2.weights.h5", "back.weights.h5", "ResNet50V2", False),
           ("ResNet50.h5", "back.weights.h5", "ResNet50", True),
           ("ResNet50_imagenet_layout.h5", "back.pkl", "ResNet50", True),
           ("ResNet50.keras", "back.pkl", "ResNet50", True),  # Keras' top by its own name, predictions
           ("seed_sequential.keras", "back.weights.h5", "seed_sequential", False),
           ("seed_functional.weights.h5", "back.pkl", "seed_functional", True)]


@pytest.mark.parametrize("source, back, kind, fresh", EXPORTS, ids=[f"{s}->{b}" for s, b, _, _ in EXPORTS])
def test_the_way_back_loads_into_keras(keras_files, source, back, kind, fresh, tmp_path, capsys):
    ref, x_npz = outputs_of(keras_files, source)
    convert(capsys, keras_files.folder / source, tmp_path / "model.pt")
    rc, stdout, stderr = call_script(capsys, EXPORTER, tmp_path / "model.pt", "-o", tmp_path / back)
    assert rc == 0, stderr
    assert ("keras.applications" in stdout) == fresh, stdout
    logits = keras_files.load(kind, tmp_path / back, x_npz)
    dlogit, logit = float(np.abs(logits - ref["logits"]).max()), float(np.abs(ref["logits"]).max())
    FIGURES.append((f"applications export {source} -> {back} -> Keras {kind}", f"max|dlogit| {dlogit:.2e}"))
    assert dlogit <= TOL * logit


def test_preprocessing_is_keras_preprocess_input_exactly(keras_files):
    """v1's "caffe" and V2's "tf" preprocess_input, as Keras computes them, bit for bit."""
    keras_files.wait_for("seed head")
    with np.load(keras_files.folder / "preprocess.npz") as keras:
        images = torch.from_numpy(keras["images"])  # NHWC uint8, as Keras takes them
        for mode in ("caffe", "tf"):
            ours = images_to_input(images, mode=mode).permute(0, 2, 3, 1).numpy()
            assert ours.dtype == keras[mode].dtype and np.array_equal(ours, keras[mode]), mode


def original_names(layer):
    """ResNet50's original name of a layer Keras names ``conv2_block1_1_conv`` (the inverse of keras_name)."""
    fixed = {"conv1_conv": "conv1", "conv1_bn": "bn_conv1", "predictions": "fc1000"}
    if layer in fixed:
        return fixed[layer]
    stage, block, part, kind = layer[4], int(layer.split("_block")[1].split("_")[0]), layer.split("_")[-2], \
        layer.split("_")[-1]
    branch = {"0": "1", "1": "2a", "2": "2b", "3": "2c"}[part]
    return f"{'res' if kind == 'conv' else 'bn'}{stage}{chr(ord('a') + block - 1)}_branch{branch}"


def test_resnet50_original_names_convert(keras_files, tmp_path, capsys):
    """Keras' first ImageNet files name ResNet50's layers res2a_branch2a, bn_conv1, fc1000: a Keras 2
    weights file with those names (Keras' own file, its layers renamed) converts the same."""
    ref, _ = outputs_of(keras_files, "ResNet50.h5")
    renamed = tmp_path / "resnet50_original_names.h5"
    with h5py.File(keras_files.folder / "ResNet50_imagenet_layout.h5") as src, h5py.File(renamed, "w") as dst:
        layers = [n.decode() if isinstance(n, bytes) else n for n in src.attrs["layer_names"]]
        new = {layer: original_names(layer) if keras_name(layer) else layer for layer in layers}
        dst.attrs["layer_names"] = np.array([new[n].encode() for n in layers])
        for layer in layers:
            group = dst.create_group(new[layer])
            names = [w.decode() if isinstance(w, bytes) else w for w in src[layer].attrs["weight_names"]]
            group.attrs["weight_names"] = np.array([w.replace(layer, new[layer], 1).encode() for w in names])
            for w in names:
                group[w.replace(layer, new[layer], 1)] = src[layer][w][()]
    assert "res2a_branch2a" in new.values() and "bn5c_branch2c" in new.values()
    said = convert(capsys, renamed, tmp_path / "r50.pt")
    assert "names read by ResNet50's original layer names" in said, said
    dlogit, logit = gap(load_model(tmp_path / "r50.pt"), ref["x"], ref["logits"])
    assert dlogit <= TOL * logit


@pytest.mark.parametrize("file, needles", [
    ("efficientnetb0.weights.h5", ("another network", "DepthwiseConv2D", "EfficientNet", "ResNet50V2")),
    ("vgg16.weights.h5", ("another network", "convolutions of sizes 3x3", "supported:")),
    ("conv_bn_head.keras", ("layer 'conv2d' (Conv2D) on the ResNet's features is not supported",)),
])
def test_other_networks_and_heads_are_refused_in_one_line(keras_files, file, needles, tmp_path, capsys):
    keras_files.wait_for("others")
    rc, _, stderr = call_script(capsys, CONVERTER, keras_files.folder / file, "-o", tmp_path / "x.pt")
    assert_refused(rc, stderr, *needles, nothing_in=tmp_path)


def test_a_missing_layer_is_named(keras_files, tmp_path, capsys):
    """A pickle of Keras' own names with one BatchNorm left out: the first difference, by name."""
    outputs_of(keras_files, "ResNet50.h5")
    with np.load(keras_files.folder / "ResNet50.npz") as saved:
        arrays = {k: saved[k] for k in saved.files if not k.startswith("conv4_block3_2_bn/")}
    with open(tmp_path / "r50.pkl", "wb") as f:
        pickle.dump(arrays, f)
    rc, _, stderr = call_script(capsys, CONVERTER, tmp_path / "r50.pkl", "-o", tmp_path / "out" / "x.pt")
    assert_refused(rc, stderr, "conv4_block3_2_bn", nothing_in=tmp_path / "out")
