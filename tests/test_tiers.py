"""The suite's tiers: where TensorFlow and Keras are not installed, the keras tests are skipped
with the reason and the others run; under TORCH_RESNET_REQUIRE_KERAS=1 (.ci/run) they fail
instead. Checked on a part of the suite, in a pytest of its own that cannot find TensorFlow, Keras
or tf-keras (a sitecustomize on PYTHONPATH hides them, as where they were never installed)."""
import os
import subprocess
import sys
import xml.etree.ElementTree as ET

import pytest

from conftest import ROOT

pytestmark = pytest.mark.slow  # a pytest process of its own

HIDE = '''"""TensorFlow, Keras and tf-keras are not found here, as where they are not installed: every
import finder is wrapped so as not to find them (find_spec gives None, import raises
ModuleNotFoundError); the rest is found as before."""
import sys

HIDDEN = {"tensorflow", "keras", "tf_keras"}


class Hide:
    def __init__(self, finder):
        self.finder = finder

    def find_spec(self, name, path=None, target=None):
        return None if name.partition(".")[0] in HIDDEN else self.finder.find_spec(name, path, target)

    def __getattr__(self, name):  # invalidate_caches, find_distributions
        return getattr(self.finder, name)


sys.meta_path[:] = [Hide(finder) for finder in sys.meta_path]
'''
# A Keras module marked whole, one with tests marked by the Keras fixtures they use and tests that
# need no Keras, and a test marked keras in its module (the bench's Keras peer)
PART = ["tests/test_parity.py", "tests/test_export.py", "tests/test_bench.py"]


def pytest_without_keras(tmp_path, *args, require=False):
    """pytest on ``args`` where TensorFlow cannot be found: (exit status, {test: (outcome, message)}, output)."""
    hide = tmp_path / "hide"
    hide.mkdir(exist_ok=True)
    (hide / "sitecustomize.py").write_text(HIDE)
    # not this session's worker, nor its TORCH_RESNET_REQUIRE_KERAS (.ci/run sets it)
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST_") and k != "TORCH_RESNET_REQUIRE_KERAS"}
    env["PYTHONPATH"] = os.pathsep.join([str(hide), *filter(None, [os.environ.get("PYTHONPATH")])])
    if require:
        env["TORCH_RESNET_REQUIRE_KERAS"] = "1"
    xml, base = tmp_path / "report.xml", tmp_path / "base"
    r = subprocess.run([sys.executable, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider", "--basetemp", str(base),
                        "--junitxml", str(xml), *args], cwd=ROOT, capture_output=True, text=True, timeout=600, env=env)
    cases = {}
    for case in ET.parse(xml).iter("testcase"):
        outcome = next((c for c in case if c.tag in ("skipped", "failure", "error")), None)
        cases[case.get("name")] = ("passed", "") if outcome is None else (outcome.tag, outcome.get("message", ""))
    assert not list(base.glob("keras*")), "a Keras process was started"
    return r.returncode, cases, r.stdout + r.stderr


def test_without_tensorflow_the_keras_tests_skip_with_the_reason_and_the_rest_pass(tmp_path):
    rc, cases, out = pytest_without_keras(tmp_path, *PART)
    assert rc == 0, out[-3000:]
    skipped = {name for name, (outcome, _) in cases.items() if outcome == "skipped"}
    passed = {name for name, (outcome, _) in cases.items() if outcome == "passed"}
    assert skipped | passed == set(cases), out[-3000:]  # no failure, no error
    reason = "needs TensorFlow and Keras: tensorflow, keras, tf_keras not installed (pip install -e '.[test]')"
    assert all(cases[name][1] == reason for name in skipped), {cases[name][1] for name in skipped}
    assert {"test_logits_and_features_match_keras[keras3]", "test_each_numerical_trap_breaks_parity[symmetric_padding]",
            "test_round_trip_is_bit_identical[keras3]", "test_bench_measures_ours_and_each_peer"} <= skipped
    assert {"test_missing_weights", "test_refuses_non_state_dicts", "test_bench_refuses_bad_options"} <= passed
    assert f"{len(skipped)} keras tests skipped: {reason}" in out and f"SKIPPED [{len(skipped)}]" in out


def test_under_require_keras_a_missing_tensorflow_fails_the_run(tmp_path):
    rc, cases, out = pytest_without_keras(tmp_path, *PART, "-m", "keras", require=True)
    assert rc == 1, out[-3000:]
    assert cases and all(outcome == "error" and "TORCH_RESNET_REQUIRE_KERAS is set and this test needs TensorFlow"
                         in message for outcome, message in cases.values()), cases
