"""tvmshuffle: ShuffleNet and other CNNs compiled, tuned and deployed with Apache TVM."""

__version__ = "0.1.0"
