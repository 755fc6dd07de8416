"""The SQLite queue: one file (queuefile), and one small class a concern over it: entries and
their fenced lifecycle, key reservations, the multipart journal (uploads), counters, and the
operators' commands; queue.Queue composes them. Owner tokens tell a live claim from a dead one.
It imports no other layer of the package but errors and outcomes."""
