"""Layer 4, data: CIFAR python batches checked, kept on the device and augmented there
(``cifar``); small learnable stand-ins in the same formats (``synthetic``)."""
