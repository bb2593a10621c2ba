"""Benchmarks: udpoverlay against host routing and the kernel's vxlan.

Run `python -m benchmarks.run --help` from the repository root, as root.
"""
