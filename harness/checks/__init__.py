"""Stage 4: the cross-checks. Each check family is a module whose checks register themselves
(`registry.check`); the runner, the workload driver and the mutation self-check live here too."""
