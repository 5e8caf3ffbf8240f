"""Layer 2, files: every format read or written, each read as data (no code runs): default
paths, atomic writes and checked state dicts (``files``), pickles (``safe_pickle``), Keras 3
``.keras`` / ``.weights.h5`` and Keras 2 ``.h5`` (``keras_files``, ``keras_h5``, the model
description in ``keras_config``), safetensors (``safetensors_io``)."""
