"""Stage 1: the kernel. Source, patch series, working tree, Kconfig, kbuild, verification, and the
content-addressed pipeline that ties them together (`build`)."""
