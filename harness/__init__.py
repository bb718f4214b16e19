"""numa-harness: build, boot and cross-check Linux NUMA balancing on a real kernel."""

__version__ = "0.1.0"
