"""numa-harness: build, boot and cross-check Linux NUMA balancing on a real kernel."""

from pathlib import Path

__version__ = "0.1.0"

# The repository the package runs from (an editable install): kernel-config/, images/ and
# guest-tests/ are data the stages read, not Python modules.
REPO_ROOT = Path(__file__).resolve().parent.parent
