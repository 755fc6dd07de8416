"""Tests of sftppush/queue: the durable queue's guarantees and the operator's commands."""
