"""Tests of sftppush/runtime: the consumer, its policy, the supervisor, wake-ups."""
