"""Key reservations: one object key, one local path (SPEC 3). An entry takes its key before
its upload starts; whoever else holds the key says whether it may.

Owns take_keys's three statements and the answer worked out between them (`key_answer`).
It never changes an entry's state, and never gives a key to an entry whose lease is not
held with time left.
"""

from __future__ import annotations

import json
from collections.abc import Sequence

from sftppush.queue.entries import Entry, KeyTaken
from sftppush.queue.queuefile import QueueFile

# The entries of a batch whose lease is held and not run out; one (id, owner) pair a row.
LEASED_IN_BATCH = """
SELECT id FROM entries, (SELECT json_extract(value, '$[0]') AS jid,
                                json_extract(value, '$[1]') AS jowner FROM json_each(?))
 WHERE id = jid AND +state = 'claimed' AND owner = jowner AND due > ?"""
# Every row with a key holds it (a failed one that never uploaded has none): its path,
# whether it recorded a verified upload, whether it is settled (done, or its upload recorded).
KEY_HOLDERS = """
SELECT id, key, path, etag IS NOT NULL, state = 'done' FROM entries
 WHERE key IN (SELECT value FROM json_each(?))"""
# A recorded upload stays recorded only for the key it went to.
WRITE_KEYS = """
UPDATE entries SET key = j.key, etag = CASE WHEN entries.key = j.key THEN entries.etag END
  FROM (SELECT json_extract(value, '$[0]') AS id, json_extract(value, '$[1]') AS key
          FROM json_each(?)) AS j
 WHERE entries.id = j.id"""

Holders = dict[int, tuple[bytes, bool, bool]]  # id -> (path, upload recorded, settled)


class Keys:
    """The key reservations of one queue file."""

    def __init__(self, file: QueueFile) -> None:
        self.file = file

    def take_key(self, entry: Entry, key: str, now: float | None = None) -> KeyTaken | None:
        """Reserve `key` for this entry's upload: one key, one local path (SPEC 3).

        In one transaction: if an entry of another path holds the key (claimed, pending or
        done with its upload recorded; a failed one holds none), returns
        KeyTaken(holder=that path) and sets nothing; else records the key on this entry
        (with `doubt` if a done entry of another path holds it recording no upload).
        None means the lease was lost (or ran out: an upload must not start on it) and
        nothing was set.
        """
        return self.take_keys([(entry, key)], now)[0]

    def take_keys(self, wanted: Sequence[tuple[Entry, str]],
                  now: float | None = None) -> list[KeyTaken | None]:
        """take_key for several entries in one transaction, in order: each answer is the one
        take_key would give after the entries before it (two paths of one batch that map
        to one key: the second finds the first holding it).

        Three statements whatever the batch's size: the leases, the rows that hold any of
        the keys, the keys written; the answers are worked out in between, entry by entry,
        on those rows as the earlier entries of the batch leave them.
        """
        if not wanted:
            return []
        out: list[KeyTaken | None] = []
        taken: dict[int, str] = {}  # id -> key; an entry asked twice keeps the later key
        with self.file.transaction() as db:
            now = self.file.now(now)
            leased = {r[0] for r in db.execute(
                LEASED_IN_BATCH, (json.dumps([[e.id, e.owner] for e, _ in wanted]), now))}
            holders: dict[str, Holders] = {key: {} for _, key in wanted}
            key_of: dict[int, str] = {}
            for i, key, path, stored, done in db.execute(KEY_HOLDERS,
                                                         (json.dumps(list(holders)),)):
                holders[key][i] = (bytes(path), bool(stored), bool(stored or done))
                key_of[i] = key
            for entry, key in wanted:
                answer = key_answer(holders[key], entry, entry.id in leased)
                if answer is not None and answer.holder is None:
                    stored = False
                    if entry.id in key_of:  # an entry holds one key at a time
                        stored = holders[key_of[entry.id]].pop(entry.id)[1] and \
                            key_of[entry.id] == key
                    holders[key][entry.id] = (entry.path, stored, stored)
                    key_of[entry.id] = key
                    taken[entry.id] = key
                out.append(answer)
            if taken:
                db.execute(WRITE_KEYS, (json.dumps(list(taken.items())),))
        return out


def key_answer(holders: Holders, entry: Entry, leased: bool) -> KeyTaken | None:
    """take_key's answer for `entry` from the rows holding its key (id -> path, whether it
    recorded a verified upload, whether it is settled: done or with its upload recorded):
    None without a lease; the oldest holder of another path that recorded an upload, else
    the oldest one still in flight (`waits`: its upload may yet fail); else whether a
    version of this path (this entry included) verifiably wrote the key.

    A done holder of another path that recorded no upload (superseded) proves nothing
    about the object (SPEC 3): its PUT may have landed with the answer lost, or never have
    been sent. Unless this path's own upload is recorded, it is named as `doubt`, and the
    object's own metadata decides (the caller looks before it uploads)."""
    if not leased:
        return None
    others = sorted(i for i, (path, _, _) in holders.items() if path != entry.path)
    if stored := [i for i in others if holders[i][1]]:
        return KeyTaken(holder=holders[stored[0]][0], known=False)
    if flying := [i for i in others if not holders[i][2]]:
        return KeyTaken(holder=holders[flying[0]][0], known=False, waits=True)
    known = any(recorded for _, recorded, _ in holders.values())
    return KeyTaken(holder=None, known=known,
                    doubt=holders[others[0]][0] if others and not known else None)
