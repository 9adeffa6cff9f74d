"""What the channel passes did to a module, counted as they do it: the manifest's
``channel_passes`` and `compile`'s summary say which rewrites happened, never one that did not.

A pass calls ``note(event)`` where it rewrites; the counts go to the ``recording()`` around the
pipeline run that wants them (``export.build_artifact`` around the graph passes and the build)
and nowhere otherwise (tuning runs the same passes without one). The events:

* ``shuffles_fused_into_convolutions``: a channel shuffle became the permuted input read of
  the convolution that consumes it (``channel_shuffle``), no kernel of its own;
* ``shuffles_written_by_producers``: (NEON) such a fused shuffle moved to the convolution
  before it, which writes its output shuffled (``shuffle_writes``, in ``pipeline.fuse``);
* ``identity_shuffles_removed``: a shuffle of one group, which permutes nothing, removed;
* ``split_regions_rebuilt``: a tensor leaving a ShuffleNet v2 concat -> shuffle -> split
  region rebuilt from the branch outputs (``channel_split``), of which
  ``split_regions_in_conv_weights`` are read only by convolutions that absorbed the order in
  their weights and ``split_regions_gathered`` are made a tensor of their own (a gather of
  channel ranges, with a ``take`` where its order is not theirs);
* ``constant_takes_as_slices``: a ``take`` of a constant index rewritten as the slice it means
  (``take_to_slice``);
* ``gathers_folded_into_weights``: such a gather (a constant channel permutation) moved past
  per-channel operators into a convolution's weights (``channel_ranges``), no kernel left;
* ``ranges_read_by_convolutions``: a concat of channel ranges read by a convolution became
  that convolution's input stage (``channel_ranges``), no kernel and no tensor of its own.
"""

from __future__ import annotations

import collections
import contextlib
import contextvars

EVENTS = ("shuffles_fused_into_convolutions", "shuffles_written_by_producers",
          "identity_shuffles_removed",
          "split_regions_rebuilt", "split_regions_in_conv_weights", "split_regions_gathered",
          "constant_takes_as_slices", "gathers_folded_into_weights",
          "ranges_read_by_convolutions")

_current: contextvars.ContextVar = contextvars.ContextVar("tvmshuffle_pass_ledger",
                                                          default=None)


def note(event: str) -> None:
    """Count one ``event`` (one of EVENTS) for the recording in progress, if any."""
    if event not in EVENTS:
        raise ValueError(f"unknown pass event {event!r}")
    counts = _current.get()
    if counts is not None:
        counts[event] += 1


@contextlib.contextmanager
def recording():
    """Count the events of the passes run inside: yields a dict of every event (0 if none)."""
    counts = collections.Counter({event: 0 for event in EVENTS})
    token = _current.set(counts)
    try:
        yield counts
    finally:
        _current.reset(token)
