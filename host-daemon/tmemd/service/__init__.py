"""The daemon: guest streams, sessions, control socket, state file, metrics, configuration."""
