"""The benchmark harness: how StreamScore compares with the glue a user would write, and with the machine.

Not part of what ``pip install streamscore`` installs or runs; its extra dependencies are in the ``bench``
extra. Run from the repository root: ``python -m benchmarks --model efficientnet-lite0 --images 2000``.
"""
