"""Tests of sftppush/source: the watcher, scans, sd_notify, upkeep."""
