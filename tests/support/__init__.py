"""What the tests of every room share, outside the fixtures (tests/conftest.py)."""
