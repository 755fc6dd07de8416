"""Tests of the edges: the CLI, config, logs, signals, status, progress, demo, systemd units."""
