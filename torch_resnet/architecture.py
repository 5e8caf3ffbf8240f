"""The network's shape as plain numbers, importable without torch (the isolated file reader
checks a Keras model description against it; ``model.py`` builds the network from it)."""
KERAS_BN_EPS = 1e-3
KERAS_BN_MOMENTUM = 0.01  # PyTorch's 0.01 is the same update as Keras' momentum=0.99
FEATURES = 256
# (input channels, output channels, stride) of the nine residual blocks.
BLOCKS = [(16, 64, 1), (64, 64, 1), (64, 64, 1),
          (64, 128, 2), (128, 128, 1), (128, 128, 1),
          (128, 256, 2), (256, 256, 1), (256, 256, 1)]
