"""Layer 3, conversion: which Keras variable is which tensor (``keras_map``), Keras weights <->
state dict with the checks and the report (``convert``), Keras' own logits in a child process
(``keras_predict``)."""
