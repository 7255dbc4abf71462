"""Running under systemd without libsystemd: readiness notification and journald-friendly logs (stdlib only)."""
