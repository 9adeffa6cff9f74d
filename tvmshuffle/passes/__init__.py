"""tvmshuffle's own Relax passes (TVM's are used directly from tvm.relax.transform)."""

from .channel_ranges import fuse_channel_ranges, sink_channel_take
from .channel_shuffle import fuse_channel_shuffle, sink_channel_shuffle
from .channel_split import fold_channel_split, take_channels_last
from .fold_batchnorm import fold_batchnorm
from .group_axis import group_axis
from .take_to_slice import take_to_slice

__all__ = ["fold_batchnorm", "fold_channel_split", "fuse_channel_ranges", "fuse_channel_shuffle",
           "group_axis", "sink_channel_shuffle", "sink_channel_take", "take_channels_last",
           "take_to_slice"]
