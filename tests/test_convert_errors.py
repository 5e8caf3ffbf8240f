"""Bad input to the converter: one clear line, exit 2, no traceback, no output file."""
import pickle

import numpy as np
import pytest

from conftest import run_script

CONVERTER = "convert/keras_pickle_to_pt.py"


@pytest.fixture(scope="module")
def good(keras_fixtures):
    with open(keras_fixtures / "keras3_seed_numbering.pkl", "rb") as f:
        return pickle.load(f)


def assert_refused(tmp_path, src, *needles):
    out = tmp_path / "out.pt"
    r = run_script(CONVERTER, src, "-o", out)
    err = r.stderr.strip()
    assert r.returncode == 2, (r.stdout, r.stderr)
    assert "Traceback" not in r.stderr and len(err.splitlines()) == 1 and err.startswith("error: "), err
    for needle in needles:
        assert needle in err, err
    assert not out.exists() and not list(tmp_path.glob("*.pt*")) and not list(tmp_path.glob(".*tmp"))
    return err


def write_pickle(tmp_path, obj):
    path = tmp_path / "bad.pkl"
    path.write_bytes(pickle.dumps(obj))
    return path


def test_not_a_pickle(tmp_path):
    src = tmp_path / "w.pkl"
    src.write_text("these are not the weights you are looking for\n")
    assert_refused(tmp_path, src, "not a readable pickle")


def test_truncated_pickle(tmp_path, good):
    src = tmp_path / "w.pkl"
    src.write_bytes(pickle.dumps(good)[:50000])
    assert_refused(tmp_path, src, "not a readable pickle")


class RunsCode:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (exec, (f"open({str(self.marker)!r}, 'w').write('pwned')",))


def test_pickle_that_runs_code_is_refused_without_running(tmp_path, good):
    marker = tmp_path / "pwned"
    src = write_pickle(tmp_path, {**good, "evil": RunsCode(marker)})
    assert_refused(tmp_path, src, "builtins.exec")
    assert not marker.exists()


def test_missing_file_and_default_location(tmp_path):
    assert_refused(tmp_path, tmp_path / "nope.pkl", "not found")
    r = run_script(CONVERTER, env={"HOME": str(tmp_path)})
    assert r.returncode == 2 and "weights/resnet_cifar100.pkl not found" in r.stderr
    assert "Put the course's pickle there" in r.stderr and "Traceback" not in r.stderr


def test_missing_tensor(tmp_path, good):
    bad = dict(good)
    del bad["sequential_3/residual_block_12/batch_normalization_25/moving_variance"]
    assert_refused(tmp_path, write_pickle(tmp_path, bad), "residual_block_12/batch_normalization_25", "moving_variance")


def test_missing_layer(tmp_path, good):
    gone = next(k for k in good if "residual_block_14/conv2d_" in k)
    bad = {k: v for k, v in good.items() if k != gone}
    assert_refused(tmp_path, write_pickle(tmp_path, bad), "block residual_block_14", "2 3x3")


def test_extra_tensor(tmp_path, good):
    bad = {**good, "sequential_3/conv2d_99/kernel": np.zeros((3, 3, 16, 16), np.float32)}
    assert_refused(tmp_path, write_pickle(tmp_path, bad), "conv2d_99")


def test_unknown_variable(tmp_path, good):
    bad = {**good, "sequential_3/dense_1/extra": np.zeros(3, np.float32)}
    assert_refused(tmp_path, write_pickle(tmp_path, bad), "sequential_3/dense_1/extra", "unknown variable")


def test_misshaped_tensor(tmp_path, good):
    key = "sequential_3/residual_block_10/conv2d_27/kernel"
    bad = {**good, key: good[key][:, :, :32, :]}
    assert_refused(tmp_path, write_pickle(tmp_path, bad), key, "(3, 3, 32, 64)")


def test_non_float_tensor(tmp_path, good):
    key = "sequential_3/batch_normalization_37/gamma"
    bad = {**good, key: good[key].astype(np.int64)}
    assert_refused(tmp_path, write_pickle(tmp_path, bad), key, "int64")


def test_non_finite_tensor(tmp_path, good):
    key = "sequential_3/dense_1/bias"
    value = good[key].copy()
    value[3] = np.nan
    assert_refused(tmp_path, write_pickle(tmp_path, {**good, key: value}), key, "non-finite")


def test_not_a_dict_and_non_array_values(tmp_path, good):
    assert_refused(tmp_path, write_pickle(tmp_path, list(good.values())), "expected a dict")
    key = "sequential_3/dense_1/bias"
    assert_refused(tmp_path, write_pickle(tmp_path, {**good, key: good[key].tolist()}), key, "not a numpy array")


def test_memory_bomb_bytes_call_is_refused(tmp_path):
    src = tmp_path / "bomb.pkl"  # protocol 2: bytes(2**33), 8 GiB from 28 bytes
    src.write_bytes(b"\x80\x02c__builtin__\nbytes\nJ\x00\x00\x00\x02\x85R.")
    assert_refused(tmp_path, src, "bytes() called with arguments")


def test_never_overwrites_its_input(tmp_path, good):
    src = tmp_path / "weights.pt"  # a pickle whose name ends in .pt: the default output is itself
    src.write_bytes(pickle.dumps(good))
    before = src.read_bytes()
    r = run_script(CONVERTER, src)
    assert r.returncode == 2 and "is the input" in r.stderr
    assert src.read_bytes() == before
    names = tmp_path / "w.pt.keras_names.json"  # nor through the names file it writes next to the output
    names.write_bytes(before)
    r = run_script(CONVERTER, names, "-o", tmp_path / "w.pt")
    assert r.returncode == 2 and "is the input" in r.stderr and names.read_bytes() == before


def test_values_that_overflow_float32(tmp_path, good):
    key = "sequential_3/conv2d_22/kernel"
    bad = {k: v.astype(np.float64) for k, v in good.items()}
    bad[key][0, 0, 0, 0] = 1e300  # finite in float64, inf in the float32 model
    assert_refused(tmp_path, write_pickle(tmp_path, bad), key, "too large for float32")


def test_negative_moving_variance(tmp_path, good):
    key = next(k for k in good if k.endswith("moving_variance"))
    value = good[key].copy()
    value[5] = -0.5
    assert_refused(tmp_path, write_pickle(tmp_path, {**good, key: value}), key, "negative")


def test_failed_names_file_leaves_no_weights(tmp_path, good):
    src = write_pickle(tmp_path, good)
    out = tmp_path / "side.pt"
    (tmp_path / "side.pt.keras_names.json").mkdir()  # the second file cannot be written
    r = run_script(CONVERTER, src, "-o", out)
    assert r.returncode == 2 and "side.pt.keras_names.json: it is a folder" in r.stderr, r.stderr
    assert not out.exists() and not list(tmp_path.glob(".*tmp"))
