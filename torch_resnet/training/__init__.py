"""Layer 5, training and evaluation: the options (``config``), what trains in each regime
(``regimes``), the loop (``train``), ``torchrun`` ranks (``distributed``), the run folder and its
checkpoint (``checkpoint``), what a run writes (``outputs``), memory and speed settings
(``memory``, ``performance``), Keras' loop pieces (``keras_recipe``), test-split evaluation
(``evaluate``)."""
