"""Every file Keras saves, from real Keras 3 and Keras 2 (tests/make_keras_files.py): converted with
Keras' logits, written back bit for bit and loaded by Keras, and hostile or broken files refused."""
import base64
import json
import marshal
import shutil
import struct
import zipfile
import zlib

import h5py
import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from conftest import FIGURES, assert_refused, call_script, converted, ten_class_state
from torch_resnet import ResidualNetwork, images_to_input
from torch_resnet.conversion.convert import convert_keras_file
from torch_resnet.data.cifar import CIFAR10
from torch_resnet.errors import UserError
from torch_resnet.formats.files import load_model
from torch_resnet.formats.keras_names import names_sidecar, read_names
from torch_resnet.data.synthetic import write_cifar

pytestmark = [pytest.mark.keras, pytest.mark.slow]  # the session's Keras process

CONVERTER, EXPORTER = "convert/keras_pickle_to_pt.py", "convert/pt_to_keras_pickle.py"
TOL = 1e-4
FORMATS = [  # (file, the Keras model that wrote it, what it is)
    ("k3_build.weights.h5", "k3_build", "Keras 3 save_weights, keras_model.build"),
    ("k3_custom.weights.h5", "k3_custom", "Keras 3 save_weights, own block class, 10 classes"),
    ("k3_custom.keras", "k3_custom", "Keras 3 model.save .keras, own block class, Adam state"),
    ("k3_functional.keras", "k3_functional", "Keras 3 model.save .keras, functional API"),
    ("k2_weights.h5", "k2", "Keras 2 save_weights .h5, seed numbering, shortcut first"),
    ("k2_model.h5", "k2", "Keras 2 model.save .h5"),
]


@pytest.fixture(scope="session")
def files(keras_fixtures):
    return keras_fixtures / "files"


def logits(model_or_state, images):
    model = model_or_state
    if isinstance(model_or_state, dict):
        model = ResidualNetwork(model_or_state["head.weight"].shape[0])
        model.load_state_dict(model_or_state, strict=True)
    with torch.no_grad():
        return model.eval()(images_to_input(torch.from_numpy(images).permute(0, 3, 1, 2))).numpy()


def check_parity(state, files, model, what):
    ref = np.load(files / f"{model}.npz")
    ours, keras = logits(state, ref["images"]), ref["logits"]
    d = np.abs(ours - keras).max()
    FIGURES.append((f"parity {what}", f"max|dlogit| {d:.2e} (max|logit| {np.abs(keras).max():.1f})"))
    assert np.abs(keras).max() >= 10 and d <= TOL
    assert (ours.argmax(1) == keras.argmax(1)).all()


@pytest.mark.parametrize("name, model, what", FORMATS)
def test_each_keras_format_gives_keras_logits(files, tmp_path, capsys, name, model, what):
    rc, out, err = call_script(capsys, CONVERTER, files / name, "-o", tmp_path / "w.pt")
    assert rc == 0, err
    check_parity(torch.load(tmp_path / "w.pt", weights_only=True), files, model, what)


def test_safetensors_output_loads_and_keeps_the_names(files, tmp_path, capsys):
    out = tmp_path / "w.safetensors"
    rc, _, err = call_script(capsys, CONVERTER, files / "k3_custom.keras", "-o", out)
    assert rc == 0 and not names_sidecar(out).exists(), err
    check_parity(load_file(out), files, "k3_custom", ".keras -> .safetensors (safetensors.torch.load_file)")
    names = json.loads(read_names(out).text)  # in the metadata, where --weights and the trainer find them
    assert names["format"] == "Keras 3 .keras" and len(names["keras3_h5"]["tensors"]) == 100
    assert torch.equal(load_model(out).head.weight, load_file(out)["head.weight"])  # what --weights reads
    assert load_model(out).keras_names.record() == names


def test_evaluate_takes_safetensors(files, tmp_path, capsys):
    write_cifar(tmp_path / "data", CIFAR10, 0, 10, seed=1)
    convert_keras_file(files / "k3_custom.keras", tmp_path / "w.safetensors")
    rc, out, err = call_script(capsys, "train/evaluate.py", "--weights", tmp_path / "w.safetensors", "--data-dir",
                               tmp_path / "data", "--no-download", "--device", "cpu")
    assert rc == 0 and "top-1" in out, err


def test_block_roles_by_shape_or_spelled_order_else_refused(files, tmp_path, capsys):
    renamed = tmp_path / "renamed.weights.h5"
    shutil.copyfile(files / "k3_build.weights.h5", renamed)
    with h5py.File(renamed, "r+") as f:  # names that spell no order: 16 -> 64 channels, the shapes tell
        f.move("layers/residual_block/bn1", "layers/residual_block/pre_norm")
        f.move("layers/residual_block/bn2", "layers/residual_block/post_norm")
    convert_keras_file(renamed, tmp_path / "w.pt")
    check_parity(torch.load(tmp_path / "w.pt", weights_only=True), files, "k3_build", "BNs told apart by shape")
    with h5py.File(renamed, "r+") as f:  # 64 -> 64 channels: neither names nor shapes tell
        f.move("layers/residual_block_1/bn1", "layers/residual_block_1/pre_norm")
        f.move("layers/residual_block_1/bn2", "layers/residual_block_1/post_norm")
    rc, _, err = call_script(capsys, CONVERTER, renamed, "-o", tmp_path / "out" / "w.pt")
    assert_refused(rc, err, "cannot tell which of", "residual_block_1/post_norm", "residual_block_1/pre_norm",
                   nothing_in=tmp_path / "out")


def read_h5(path):
    """{dataset path: array} and the set of groups, the optimizer left out."""
    arrays, groups = {}, set()
    with h5py.File(path, "r") as f:
        def visit(name, obj):
            if not name.startswith("optimizer"):
                if isinstance(obj, h5py.Dataset):
                    arrays[name] = obj[()]
                else:
                    groups.add(name)
        f.visititems(visit)
    return arrays, groups


def assert_same_arrays(a, b):
    assert sorted(a) == sorted(b)
    for key in a:
        assert a[key].dtype == b[key].dtype and np.array_equal(a[key], b[key]), key


@pytest.mark.parametrize("name, via", [("k3_build.weights.h5", "pt"), ("k3_custom.weights.h5", "pt"),
                                       ("k3_custom.keras", "safetensors")])
def test_keras3_round_trip_is_bit_identical(files, tmp_path, capsys, name, via):
    weights = tmp_path / f"w.{via}"
    convert_keras_file(files / name, weights)
    rc, out, err = call_script(capsys, EXPORTER, weights, "-o", tmp_path / "back.weights.h5")
    assert rc == 0 and "the source file's structure" in out, err
    source = files / name
    if name.endswith(".keras"):
        source = tmp_path / "inside.weights.h5"
        source.write_bytes(zipfile.ZipFile(files / name).read("model.weights.h5"))
    (back, back_groups), (original, groups) = read_h5(tmp_path / "back.weights.h5"), read_h5(source)
    assert_same_arrays(back, original)
    assert back_groups == groups
    FIGURES.append((f"round trip {name} -> .{via} -> .weights.h5", f"{len(back)} datasets bit-identical"))


def test_without_a_keras3_source_the_export_has_keras_own_structure(files, tmp_path, capsys):
    convert_keras_file(files / "k2_weights.h5", tmp_path / "k2.pt")  # Keras 2: no Keras 3 structure to keep
    rc, out, err = call_script(capsys, EXPORTER, tmp_path / "k2.pt", "-o", tmp_path / "k2.weights.h5")
    assert rc == 0 and "the structure of keras_model.build" in out, err
    (ours, our_groups), (keras, keras_groups) = read_h5(tmp_path / "k2.weights.h5"), read_h5(files / "k3_build.weights.h5")
    assert our_groups == keras_groups  # what Keras 3 save_weights wrote for keras_model.build()
    assert {k: v.shape for k, v in ours.items()} == {k: v.shape for k, v in keras.items()}


def fine_tuned(src, dst, seed=0):
    """The converted weights ``src`` with a new random 10-class head, written as the trainer
    would (its Keras names kept beside it, or in the safetensors metadata)."""
    state = load_model(src).state_dict()
    torch.manual_seed(seed)
    head = torch.nn.Linear(256, 10)
    state.update({"head.weight": head.weight.detach(), "head.bias": head.bias.detach()})
    if dst.suffix == ".safetensors":
        save_file({k: v.contiguous() for k, v in state.items()}, dst, metadata={"keras_names": read_names(src).text})
    else:
        torch.save(state, dst)
        if names_sidecar(src).exists():
            shutil.copyfile(names_sidecar(src), names_sidecar(dst))
    return state


def test_exports_load_into_keras_with_the_same_logits(keras_process, keras_fixtures, files, tmp_path, capsys):
    """Fine-tuned weights back into Keras, in the session's Keras process: into the author's own class
    (their file's structure), into keras_model.build (weights that came from Keras 2) with load_weights,
    and a pickle in fresh Keras 3 names assigned by Variable.path."""
    convert_keras_file(files / "k3_custom.keras", tmp_path / "custom.safetensors")
    convert_keras_file(files / "k2_model.h5", tmp_path / "k2.pt")
    torch.save(ten_class_state(converted(keras_fixtures, "keras3", tmp_path), seed=3), tmp_path / "ft_pickle.pt")
    cases = {"custom": (fine_tuned(tmp_path / "custom.safetensors", tmp_path / "ft_custom.safetensors", 1),
                        "ft_custom.safetensors", "custom.weights.h5", "the source file's structure"),
             "build": (fine_tuned(tmp_path / "k2.pt", tmp_path / "ft_build.pt", 2), "ft_build.pt", "build.weights.h5",
                       "the structure of keras_model.build"),
             "pickle": (torch.load(tmp_path / "ft_pickle.pt", weights_only=True), "ft_pickle.pt", "ten.pkl",
                        "fresh Keras 3 names of keras_model.build")}
    images = np.load(files / "k2.npz")["images"]
    np.save(tmp_path / "x.npy", images.astype(np.float32) / np.float32(127.5) - np.float32(1))
    models = []
    for kind, (_, src, out, naming) in cases.items():
        rc, stdout, err = call_script(capsys, EXPORTER, tmp_path / src, "-o", tmp_path / out)
        assert rc == 0 and naming in stdout, err
        models.append([kind, 10, str(tmp_path / out), str(tmp_path / f"{kind}.npy")])
    (tmp_path / "spec.json").write_text(json.dumps({"inputs": str(tmp_path / "x.npy"), "models": models}))
    keras_process.load(tmp_path / "spec.json")
    for kind, (state, *_) in cases.items():
        ours, keras = logits(state, images), np.load(tmp_path / f"{kind}.npy")
        d = np.abs(ours - keras).max()
        FIGURES.append((f"export 10-class into real Keras 3, {kind}", f"max|dlogit| {d:.2e} "
                                                                    f"(max|logit| {np.abs(keras).max():.1f})"))
        assert np.abs(keras).max() > 1 and d <= TOL
        assert (ours.argmax(1) == keras.argmax(1)).all()


# Hostile and broken files: one line, exit 2, nothing written, nothing run.

@pytest.fixture
def refused(tmp_path, capsys):
    def check(src, *needles, verbose=False):
        out = tmp_path / "out"
        rc, _, err = call_script(capsys, CONVERTER, src, "-o", out / "w.pt", *["-v"] * verbose)
        if verbose:
            return err
        return assert_refused(rc, err, *needles, nothing_in=out)
    return check


def keras_with_config(files, path, edit, name="k3_custom.keras"):
    """A .keras with its config.json changed by ``edit``; the weights as Keras wrote them."""
    with zipfile.ZipFile(files / name) as z:
        config, weights = json.loads(z.read("config.json")), z.read("model.weights.h5")
    edit(config["config"]["layers"])
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("config.json", json.dumps(config))
        z.writestr("metadata.json", "{}")
        z.writestr("model.weights.h5", weights)
    return path


def test_lambda_in_config_is_refused_without_running_it(files, tmp_path, refused):
    marker = tmp_path / "pwned"
    code = base64.b64encode(marshal.dumps(compile(f"open({str(marker)!r}, 'w')", "x", "exec"))).decode()
    lam = {"module": "keras.layers", "class_name": "Lambda", "config": {"name": "lambda", "function": {
        "class_name": "__lambda__", "config": {"code": code, "defaults": None, "closure": None}}}}
    src = keras_with_config(files, tmp_path / "lambda.keras", lambda layers: layers.insert(2, lam))
    refused(src, "'lambda' is a Lambda", "run code")
    assert not marker.exists()


def set_key(index, key, value):
    return lambda layers: layers[index]["config"].__setitem__(key, value)


@pytest.mark.parametrize("edit, needles", [
    (set_key(1, "use_bias", True), ("the stem Conv2D", "use_bias True")),
    (set_key(11, "epsilon", 1e-5), ("final BatchNormalization", "epsilon 1e-05", "0.001")),
    (set_key(12, "activation", "relu"), ("activation 'relu'", "silu")),
    (lambda layers: layers.pop(10), ("layer #10", "is a BatchNormalization", "residual block #9")),
    (lambda layers: layers[6]["build_config"].__setitem__("input_shape", [None, 32, 32, 128]),
     ("residual block #4 'named_block_3' gives outputs of shape [32, 32, 128]", "[16, 16, 128]")),
], ids=["conv bias", "BN epsilon", "relu", "8 blocks", "stride"])
def test_config_of_another_network_is_refused(files, tmp_path, refused, edit, needles):
    refused(keras_with_config(files, tmp_path / "other.keras", edit), "config.json", *needles)


def strides_of_first(layers, value):
    next(l for l in layers if l["config"].get("strides") == [2, 2])["config"]["strides"] = value


@pytest.mark.parametrize("edit, needles", [
    (lambda layers: strides_of_first(layers, [1, 1]), ("3 Conv2D with stride 2 layers", "has 4")),
    (lambda layers: layers.insert(3, {"class_name": "Dropout", "config": {"name": "dropout"}}),
     ("'dropout' is a Dropout", "only Conv2D")),
], ids=["stride", "dropout"])
def test_functional_config_of_another_network_is_refused(files, tmp_path, refused, edit, needles):
    refused(keras_with_config(files, tmp_path / "other.keras", edit, "k3_functional.keras"), "config.json", *needles)


def edited_h5(files, tmp_path, edit, name="k3_build.weights.h5"):
    path = tmp_path / "edited.h5"
    shutil.copyfile(files / name, path)
    with h5py.File(path, "r+") as f:
        edit(f)
    return path


CONV = "layers/residual_block_1/conv1/vars/0"  # a (3, 3, 64, 64) kernel


def replace(value, **kwargs):
    def edit(f):
        del f[CONV]
        if value is None:
            f.create_dataset(CONV, **kwargs)
        else:
            f[CONV] = value(f.filename) if callable(value) else value
    return edit


@pytest.mark.parametrize("edit, needles", [
    (replace(lambda own: h5py.ExternalLink(own, CONV.replace("_1/", "_2/"))), (CONV, "ExternalLink", "not followed")),
    (replace(h5py.SoftLink("/layers/residual_block_2/conv1/vars/0")), (CONV, "SoftLink", "not followed")),
    (replace(np.zeros((3, 3, 32, 64), np.float32)), ("residual_block_1/conv1/kernel", "(3, 3, 32, 64)")),
    (replace(np.zeros((3, 3, 64, 64), np.int64)), ("residual_block_1/conv1/kernel", "int64")),
    (replace(np.full((3, 3, 64, 64), b"x")), (CONV, "dtype |S1")),
    (replace(np.full((3, 3, 64, 64), np.nan, np.float32)), ("residual_block_1/conv1/kernel", "non-finite")),
    (replace(None, shape=(3, 3, 1024, 65536), dtype="f4", chunks=(3, 3, 64, 64)), (CONV, "more than a supported network's")),
    (lambda f: f["layers/residual_block"].__setitem__("loop", f["layers"]), ("loop/residual_block/loop", "16 deep")),
], ids=["external link", "soft link", "mis-shaped", "integer", "strings", "NaN", "2 GB declared", "cycle"])
def test_hostile_or_bad_hdf5_is_refused(files, tmp_path, refused, edit, needles):
    refused(edited_h5(files, tmp_path, edit), *needles)


def test_missing_and_extra_layers_are_all_reported(files, tmp_path, refused):
    def edit(f):
        del f["layers/residual_block_4/bn2"]
        f["layers/extra/vars/0"] = np.zeros((3, 3, 16, 16), np.float32)
    src = edited_h5(files, tmp_path, edit)
    refused(src, "(and 1 more; -v lists them all)")
    lines = refused(src, verbose=True).strip().splitlines()
    assert len(lines) == 2 and "residual_block_4" in lines[0] and "layers/extra" in lines[1], lines


def test_keras2_missing_weight_is_refused(files, tmp_path, refused):
    src = edited_h5(files, tmp_path, lambda f: f["model_weights/dense_1/dense_1"].__delitem__("bias:0"),
                    "k2_model.h5")
    refused(src, "dense_1/dense_1/bias:0", "listed but not in the file")


@pytest.mark.parametrize("name", ["k2_weights.h5", "k3_custom.keras"])
def test_truncated_files_are_refused(files, tmp_path, refused, name):
    src = tmp_path / name
    src.write_bytes((files / name).read_bytes()[:10_000_000])
    refused(src, "truncated or damaged")


def zip_bomb(files, path, declared: int, blocks: int):
    """A .keras whose model.weights.h5 inflates to ``blocks`` x 64 MiB of zeros, declaring
    ``declared`` bytes; its config.json is a real one. Written by hand (one flushed deflate block
    repeated), so it takes no time to make; the bomb's checksum is 0, never reached."""
    c = zlib.compressobj(1, zlib.DEFLATED, -15)
    data = (c.compress(bytes(2**26)) + c.flush(zlib.Z_FULL_FLUSH)) * blocks + c.flush()
    config = zipfile.ZipFile(files / "k3_custom.keras").read("config.json")
    members = [("config.json", config, 0, zlib.crc32(config), len(config)), ("model.weights.h5", data, 8, 0, declared)]
    body, central = b"", b""
    for name, payload, method, crc, size in members:
        head = struct.pack("<HHHHHIIIHH", 20, 0, method, 0, 0x21, crc, len(payload), size, len(name), 0)
        central += b"PK\x01\x02" + struct.pack("<H", 20) + head + struct.pack("<HHHII", 0, 0, 0, 0, len(body)) + name.encode()
        body += b"PK\x03\x04" + head + name.encode() + payload
    path.write_bytes(body + central + b"PK\x05\x06" + struct.pack("<HHHHIIH", 0, 0, 2, 2, len(central), len(body), 0))
    return path


def test_zip_bomb_is_refused_before_inflating(files, tmp_path, refused):
    refused(zip_bomb(files, tmp_path / "bomb.keras", 32 * 2**26, 32), "model.weights.h5 would inflate to 2048 MB")
    # one that declares 1 MB: inflated no further than that (then its checksum fails)
    refused(zip_bomb(files, tmp_path / "liar.keras", 2**20, 32), "truncated or damaged")


def test_pytorch_files_need_no_conversion(files, tmp_path, refused):
    convert_keras_file(files / "k2_weights.h5", tmp_path / "w.pt")
    convert_keras_file(files / "k2_weights.h5", tmp_path / "w.safetensors")
    refused(tmp_path / "w.pt", "is a PyTorch file (torch.save)", "needs no conversion")
    refused(tmp_path / "w.safetensors", "is a safetensors state dict", "needs no conversion")


def test_keras_files_given_as_weights_say_convert_first(files):
    for name, kind in (("k3_custom.keras", "a Keras 3 .keras file"), ("k2_model.h5", "an HDF5 file")):
        with pytest.raises(UserError, match=f"is {kind}.*convert it first"):
            load_model(files / name)
