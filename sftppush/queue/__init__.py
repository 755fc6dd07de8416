"""The SQLite queue file: entries and their states, claims and fenced acks, key reservations,
the multipart journal, counters, and the owner tokens that tell a live claim from a dead one.
It imports no other layer of the package."""
