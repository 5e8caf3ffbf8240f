"""Bad input to the converter: one clear line, exit 2, no traceback, no output file."""
import pickle

import numpy as np
import pytest

from conftest import assert_refused, call_script, run_script

CONVERTER = "convert/keras_pickle_to_pt.py"


@pytest.fixture(scope="module")
def good(keras_fixtures):
    with open(keras_fixtures / "keras3_seed_numbering.pkl", "rb") as f:
        return pickle.load(f)


@pytest.fixture
def refused(tmp_path, capsys):
    """Convert ``src`` into an empty folder: one line naming every needle, exit 2, nothing written."""
    def check(src, *needles):
        out = tmp_path / "out"
        rc, _, err = call_script(capsys, CONVERTER, src, "-o", out / "out.pt")
        return assert_refused(rc, err, *needles, nothing_in=out)
    return check


def write_pickle(tmp_path, obj):
    path = tmp_path / "bad.pkl"
    path.write_bytes(pickle.dumps(obj))
    return path


def test_not_a_pickle(tmp_path, refused):
    src = tmp_path / "w.pkl"
    src.write_text("these are not the weights you are looking for\n")
    refused(src, "w.pkl is a text file, not Keras weights", "(it begins 'these are not the weights you")


def test_truncated_pickle(tmp_path, good, refused):
    src = tmp_path / "w.pkl"
    src.write_bytes(pickle.dumps(good)[:50000])
    refused(src, "not a readable pickle")


class RunsCode:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (exec, (f"open({str(self.marker)!r}, 'w').write('pwned')",))


def test_pickle_that_runs_code_is_refused_without_running(tmp_path, good, refused):
    marker = tmp_path / "pwned"
    src = write_pickle(tmp_path, {**good, "evil": RunsCode(marker)})
    refused(src, "builtins.exec")
    assert not marker.exists()


@pytest.mark.slow
def test_missing_file_and_default_location_from_the_real_script(tmp_path, refused):
    refused(tmp_path / "nope.pkl", "not found")
    r = run_script(CONVERTER)  # in tmp_path: a course pickle of the user's is never read or replaced
    assert_refused(r.returncode, r.stderr, "weights/resnet_cifar100.pkl not found", "Put the course's pickle there",
                   nothing_in=tmp_path)


def test_missing_tensor(tmp_path, good, refused):
    bad = dict(good)
    del bad["sequential_3/residual_block_12/batch_normalization_25/moving_variance"]
    refused(write_pickle(tmp_path, bad), "residual_block_12/batch_normalization_25", "moving_variance")


def test_missing_layer(tmp_path, good, refused):
    gone = next(k for k in good if "residual_block_14/conv2d_" in k)
    bad = {k: v for k, v in good.items() if k != gone}
    refused(write_pickle(tmp_path, bad), "block residual_block_14", "2 3x3")


def test_extra_tensor(tmp_path, good, refused):
    bad = {**good, "sequential_3/conv2d_99/kernel": np.zeros((3, 3, 16, 16), np.float32)}
    refused(write_pickle(tmp_path, bad), "conv2d_99")


def test_unknown_variable(tmp_path, good, refused):
    bad = {**good, "sequential_3/dense_1/extra": np.zeros(3, np.float32)}
    refused(write_pickle(tmp_path, bad), "sequential_3/dense_1/extra", "unknown variable")


def test_misshaped_tensor(tmp_path, good, refused):
    key = "sequential_3/residual_block_10/conv2d_27/kernel"
    bad = {**good, key: good[key][:, :, :32, :]}
    refused(write_pickle(tmp_path, bad), key, "(3, 3, 32, 64)")


def test_non_float_tensor(tmp_path, good, refused):
    key = "sequential_3/batch_normalization_37/gamma"
    bad = {**good, key: good[key].astype(np.int64)}
    refused(write_pickle(tmp_path, bad), key, "int64")


def test_non_finite_tensor(tmp_path, good, refused):
    key = "sequential_3/dense_1/bias"
    value = good[key].copy()
    value[3] = np.nan
    refused(write_pickle(tmp_path, {**good, key: value}), key, "non-finite")


def test_not_a_dict_and_non_array_values(tmp_path, good, refused):
    refused(write_pickle(tmp_path, list(good.values())), "expected a dict")
    key = "sequential_3/dense_1/bias"
    refused(write_pickle(tmp_path, {**good, key: good[key].tolist()}), key, "not a numpy array")


def test_memory_bomb_bytes_call_is_refused(tmp_path, refused):
    src = tmp_path / "bomb.pkl"  # protocol 2: bytes(2**33), 8 GiB from 28 bytes
    src.write_bytes(b"\x80\x02c__builtin__\nbytes\nJ\x00\x00\x00\x02\x85R.")
    refused(src, "bytes() called with arguments")


def test_never_overwrites_its_input(tmp_path, good, capsys):
    src = tmp_path / "weights.pt"  # a pickle whose name ends in .pt: the default output is itself
    src.write_bytes(pickle.dumps(good))
    before = src.read_bytes()
    rc, _, err = call_script(capsys, CONVERTER, src)
    assert_refused(rc, err, "is the input")
    assert src.read_bytes() == before
    names = tmp_path / "w.pt.keras_names.json"  # nor through the names file it writes next to the output
    names.write_bytes(before)
    rc, _, err = call_script(capsys, CONVERTER, names, "-o", tmp_path / "w.pt")
    assert_refused(rc, err, "is the input")
    assert names.read_bytes() == before and not (tmp_path / "w.pt").exists()


def test_values_that_overflow_float32(tmp_path, good, refused):
    key = "sequential_3/conv2d_22/kernel"
    bad = {k: v.astype(np.float64) for k, v in good.items()}
    bad[key][0, 0, 0, 0] = 1e300  # finite in float64, inf in the float32 model
    refused(write_pickle(tmp_path, bad), key, "too large for float32")


def test_negative_moving_variance(tmp_path, good, refused):
    key = next(k for k in good if k.endswith("moving_variance"))
    value = good[key].copy()
    value[5] = -0.5
    refused(write_pickle(tmp_path, {**good, key: value}), key, "negative")


def test_failed_names_file_leaves_no_weights(tmp_path, good, capsys):
    src = write_pickle(tmp_path, good)
    out = tmp_path / "out" / "side.pt"
    (tmp_path / "out" / "side.pt.keras_names.json").mkdir(parents=True)  # the second file cannot be written
    rc, _, err = call_script(capsys, CONVERTER, src, "-o", out)
    assert_refused(rc, err, "side.pt.keras_names.json: it is a folder", nothing_in=tmp_path / "out")


def test_every_problem_is_counted_and_listed_with_verbose(tmp_path, good, capsys, refused):
    nan, negative, integer = ("sequential_3/dense_1/bias", next(k for k in good if k.endswith("moving_variance")),
                              "sequential_3/batch_normalization_37/gamma")
    bad = {**good, nan: np.full_like(good[nan], np.nan), negative: -good[negative],
           integer: good[integer].astype(np.int64)}
    src = write_pickle(tmp_path, bad)
    refused(src, "(and 2 more; -v lists them all)")
    rc, _, err = call_script(capsys, CONVERTER, src, "-o", tmp_path / "out" / "out.pt", "-v")
    lines = err.strip().splitlines()
    assert rc == 2 and len(lines) == 3 and all(l.startswith("error: ") for l in lines) and "Traceback" not in err
    for key, what in ((nan, "non-finite"), (negative, "negative"), (integer, "int64")):
        assert any(key in l and what in l for l in lines), (key, lines)
    assert not (tmp_path / "out").exists()


def test_every_unreadable_name_is_counted(tmp_path, good, refused):
    bad = {**good, "sequential_3/dense_1/extra": np.zeros(3, np.float32), "lonely": np.zeros(3, np.float32)}
    refused(write_pickle(tmp_path, bad), "unknown variable 'extra'", "(and 1 more; -v lists them all)")
