"""The session's one Keras process, started by tests/conftest.py (TensorFlow stays out of pytest).

    python tests/make_keras_fixtures.py OUT_DIR

Builds the reference Keras 3 model under several naming schemes, gives it random non-trivial
weights, pickles each the way the course would, and stores Keras' logits and pooled features on
fixed inputs (inference mode) next to the pickles, in OUT_DIR/<scheme>.{pkl,npz}; writes the Keras
files of tests/make_keras_files.py in OUT_DIR/files; says "fixtures" on stdout. Then, when
OUT_DIR/training/inputs.pkl is there, the training reference of tests/make_keras_training_fixtures.py
in OUT_DIR/training, and says "training". Then, for each SPEC.json path read from stdin, it loads
exported weights into Keras (make_keras_files.load) and says "loaded SPEC.json", until stdin closes.
One TensorFlow start-up for all of it.
"""
import os
import pickle
import sys
from pathlib import Path

import make_keras_files  # first: it sets TF_USE_LEGACY_KERAS before TensorFlow is imported
import numpy as np

from torch_resnet import keras_model as km

SCHEMES = {
    # name: (pickle style, build a throwaway model first (seed numbering), shortcut first, from raw, model name)
    "keras3": ("keras3", False, False, False, None),
    "keras3_seed_numbering": ("keras3", True, False, False, "sequential_3"),
    "keras2_seed_numbering_shortcut_first": ("keras2", True, True, False, None),
    "keras2_flat": ("keras2_flat", False, False, False, None),
    "shortcut_from_raw": ("keras3", False, True, True, None),
}


def main(out_dir):
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(1)
    images = rng.integers(0, 256, (8, 32, 32, 3), dtype=np.uint8)
    x = images.astype(np.float32) / 127.5 - 1.0
    for i, (name, (style, warm, first, raw, model_name)) in enumerate(SCHEMES.items()):
        km.keras.backend.clear_session()
        if warm:  # a model made earlier in the same session shifts every layer number (Keras numbers
            km.build(shortcut_first=first, shortcut_from_raw=raw, built=False)  # layers when made, not built)
        model = km.build(shortcut_first=first, shortcut_from_raw=raw, name=model_name)
        km.randomize(model, seed=10 + i)
        features_model = km.keras.Model(model.inputs[0], model.layers[-2].output)
        logits = np.asarray(model(x, training=False))
        features = np.asarray(features_model(x, training=False))
        if style == "keras2_flat":  # tf.keras names with no model or block scope
            weights = {v.path.rsplit("/", 2)[-2] + "/" + v.path.rsplit("/", 1)[-1] + ":0": np.asarray(v.numpy())
                       for v in model.weights}
        else:
            weights = km.weights_dict(model, style)
        with open(out / f"{name}.pkl", "wb") as f:
            pickle.dump(weights, f)
        np.savez(out / f"{name}.npz", images=images, logits=logits, features=features)
    make_keras_files.make(out / "files")


def serve(out_dir):
    out = Path(out_dir)
    answers = os.fdopen(os.dup(1), "w")  # the answers' own channel: whatever else writes to stdout
    os.dup2(2, 1)  # (TensorFlow, Keras) goes to stderr
    main(out)
    print("fixtures", file=answers, flush=True)
    if (out / "training" / "inputs.pkl").is_file():
        import make_keras_training_fixtures
        make_keras_training_fixtures.main(out / "training")
        print("training", file=answers, flush=True)
    for line in sys.stdin:
        make_keras_files.load(line.strip())
        print(f"loaded {line.strip()}", file=answers, flush=True)


if __name__ == "__main__":
    serve(sys.argv[1])
