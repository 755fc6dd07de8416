"""One file, from its path to what the sink is given: safe open under the root, decompression,
object keys and metadata, and the delete after a verified upload. It never claims or acks
(the runtime does) and never speaks HTTP (the sink does)."""
