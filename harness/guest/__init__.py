"""Stage 2: the guest. Topology, initramfs image, the QEMU process, SSH, serial console, kernel-bug
reports, launching, the background supervisor and the registry of running guests."""
