"""Channel alignment: the multiple of channels a device runs fastest, read from a profile.

Runtimes run convolutions in blocks of channels: ONNX Runtime's CPU kernels use blocks of 8
channels with AVX2 and 16 with AVX-512 (NCHWc), GPUs' tensor cores want multiples of 8 in
fp16. A channel count off the block runs on a slower path or pays for the padding, so a
pruned layer of 12 channels can take longer than one of 16. Pruning should then keep
multiples of the block, and only there.

Every profile measures a **channel sweep**: a 3x3 convolution on a 16x16 map with ``c``
input and output channels, for every ``c`` in :data:`SWEEP_CHANNELS`.
:func:`channel_block` reads the block from it: the largest ``b`` of :data:`BLOCKS` for which
a count halfway between two multiples of ``b`` (24 for 16) costs what the next multiple
(32) costs, where a smooth device would cost about halfway between the two multiples (16
and 32): rounding up to a multiple of ``b`` then costs nothing, and the counts between buy
no speed. On a device without blocks the block is 1, and also where the sweep's latency
barely changes between multiples (a GPU whose launch overhead dominates a kernel this
small: the sweep cannot tell).

Measured on this project's development CPU (AMD EPYC, AVX2; ONNX Runtime 1.32, 1 thread),
the sweep gave 16, not the 8 its documentation suggests: 24 channels took 49 us and 32
took 48 us (40 and 48: 97 and 96 us); counts off a multiple of 4 run on a generic path that
costs about linearly in the count (21 channels 41 us, 31 channels 71 us).

A search space whose ``channels.round_to`` is not set rounds kept channel counts to the
profile's block (:meth:`autocompress.space.SearchSpace.for_device`).
"""

from __future__ import annotations

from collections.abc import Mapping

from autocompress.hardware._kernel import Kernel

__all__ = ["BLOCKS", "SWEEP_CHANNELS", "channel_block", "sweep_kernel", "sweep_kernels"]

#: The channel counts of the sweep: two periods of a 32-channel block, three of 16.
SWEEP_CHANNELS = tuple(range(16, 65))
#: The blocks told apart, smallest first (the sweep spans too few multiples of 32).
BLOCKS = (1, 2, 4, 8, 16)
#: A halfway count is as costly as the next multiple when it is no further below it than
#: this share of the step between the multiples (a smooth device: about half).
STEP_SHARE = 0.2
#: Steps between multiples smaller than this share of the larger one's latency are noise.
MIN_STEP = 0.1
#: The share of halfway counts that must cost what the next multiple costs.
SHARE = 0.75
_SWEEP_SIZE = 16


def sweep_kernel(channels: int) -> Kernel:
    """The sweep's convolution with ``channels`` inputs and outputs."""
    return Kernel("conv", channels, channels, _SWEEP_SIZE, _SWEEP_SIZE, kernel=3)


def sweep_kernels() -> list[Kernel]:
    """The sweep's convolutions, one per count of :data:`SWEEP_CHANNELS`."""
    return [sweep_kernel(c) for c in SWEEP_CHANNELS]


def channel_block(latency_ms: Mapping[int, float]) -> int:
    """The largest block ``b`` of :data:`BLOCKS` such that, for at least :data:`SHARE` of the
    swept counts ``c`` halfway between multiples of ``b`` (at least two of them), ``c`` is
    within :data:`STEP_SHARE` of the step below the next multiple ``c + b/2``, the step from
    the multiple before (``c - b/2``) being at least :data:`MIN_STEP`; 1 if none."""
    for block in reversed(BLOCKS[1:]):
        half = block // 2
        halfway = [c for c in sorted(latency_ms) if c % block == half
                   and c - half in latency_ms and c + half in latency_ms]
        as_costly = 0
        for c in halfway:
            down, here, up = (latency_ms[c - half], latency_ms[c], latency_ms[c + half])
            step = up - down
            as_costly += step >= MIN_STEP * up and up - here <= STEP_SHARE * step
        if len(halfway) >= 2 and as_costly >= SHARE * len(halfway):
            return block
    return 1
