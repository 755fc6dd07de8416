"""Tests of sftppush/pipeline: safe open and delete, decompression, keys, one file's pass."""
