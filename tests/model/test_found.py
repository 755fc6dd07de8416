"""What the model test found on 05b1e90, pinned: each run is the shrunk sequence Hypothesis
printed (tests/model/test_model.py), replayed step by step with every invariant checked after
each step and at the end (teardown quiesces: writers close, the store heals, time passes,
consumers drain). Each failed on 05b1e90; the issue 23 commits say which hole it is.
"""

from __future__ import annotations

from typing import Any

from tests.model.machine import Model

STORE = {"conditional": True, "checksums": "validate", "opaque": False}


def replay(setup: dict[str, Any], *steps: tuple[str, dict[str, Any]]) -> None:
    model = Model()
    try:
        model.setup(**setup)
        for rule, args in steps:
            getattr(model, rule)(**args)
            model.check()
    finally:
        model.teardown()


def test_kept_files_are_not_uploaded_again_after_a_purge() -> None:
    """Hole 6: delete_after_upload false, purge, rescan: uploaded 2 times."""
    replay({"crt": False, **STORE, "delete": False},
           ("write", {"d": b"a", "name": b"x.csv", "size": 300}),
           ("quiesce", {}),
           ("done_entries_purged", {}),
           ("quiesce", {}))


def test_a_directory_the_service_cannot_write_ends_with_a_reason() -> None:
    """Hole 7: failed "internal error: PermissionError ... -> .sftppush-deleting.N"."""
    replay({"crt": False, "conditional": False, "checksums": "validate", "opaque": False,
            "delete": False},
           ("delete_after_upload_switched", {}),
           ("rename_over", {"d": b"b", "name": b"x.csv", "size": 300}),
           ("dir_unwritable", {"d": b"b", "on": True}),
           ("quiesce", {}))


def test_a_file_a_client_holds_open_is_not_uploaded_half_written() -> None:
    """Hole 10: found by a rescan while its client still writes it, uploaded as it was."""
    replay({"crt": False, "conditional": False, "checksums": "validate", "opaque": False,
            "delete": False},
           ("consumer_started", {}),
           ("open_and_hold", {"d": b"a", "name": b"rep "}),
           ("rescan", {}),
           ("consumers_run", {}))


def test_without_leases_a_file_a_client_holds_open_is_never_deleted() -> None:
    """Hole 3: where F_SETLEASE is refused, the file was deleted under its writer."""
    replay({"crt": False, **STORE, "delete": True},
           ("open_and_hold", {"d": b"a", "name": b"rep "}),
           ("file_system_leases", {"leases": False}),
           ("rescan", {}),
           ("consumers_run", {}),
           ("held_file_written", {"which": 0}))


def test_a_name_with_a_trailing_space_is_its_own_objects_path() -> None:
    """Hole 2: HTTP trims "rep " to "rep" in metadata; after a purge, the conditional
    re-send found its own object and failed "key collision: ... holds u1:rep"."""
    replay({"crt": True, **STORE, "delete": True},
           ("write", {"d": b"a", "name": b"rep ", "size": 300}),
           ("watcher_reads_events", {}),
           ("consumers_run", {}),
           ("done_entries_purged", {}),
           ("write", {"d": b"a", "name": b"rep ", "size": 300}),
           ("watcher_reads_events", {}),
           ("consumers_run", {}))


def test_a_newer_version_after_a_failed_first_never_replaces_another_paths_object() -> None:
    """Hole 1: x.csv uploaded and purged; x.csv.gz v1 takes the key and fails once; v2
    supersedes it and was uploaded unconditionally, over x.csv's object."""
    replay({"crt": True, **STORE, "delete": True},
           ("write", {"d": b"a", "name": b"x.csv", "size": 300}),
           ("watcher_reads_events", {}),
           ("consumers_run", {}),
           ("done_entries_purged", {}),
           ("write", {"d": b"a", "name": b"x.csv.gz", "size": 300}),
           ("watcher_reads_events", {}),
           ("store_fails_next", {"n": 1}),
           ("consumers_run", {}),
           ("write", {"d": b"a", "name": b"x.csv.gz", "size": 5000}),
           ("watcher_reads_events", {}),
           ("time_passes", {"seconds": 2.0, "reached": False}),
           ("consumers_run", {}))


def test_a_file_held_open_at_its_delete_and_closed_unwritten_is_not_stranded() -> None:
    """Hole 4: unlink met a writer (EAGAIN), the entry ended done; the writer closed
    without writing: same version, no event, the file stayed for good."""
    replay({"crt": True, **STORE, "delete": True},
           ("write", {"d": b"a", "name": b"rep ", "size": 300}),
           ("watcher_reads_events", {}),
           ("consumer_steps", {"which": 0, "action": "claim"}),
           ("open_and_hold", {"d": b"a", "name": b"rep "}),
           ("consumer_steps", {"which": 0, "action": "deliver"}),
           ("consumer_steps", {"which": 0, "action": "settle"}),
           ("consumer_steps", {"which": 0, "action": "flush"}),
           ("held_file_closed", {"which": 0, "write_first": False}))


def test_a_private_name_left_by_a_killed_consumer_goes_after_a_resend() -> None:
    """Hole 5: killed between the set-aside rename and the unlink, then the name re-sent
    before the next claim: the next claim found a newer version at the name (superseded)
    and left the private name for good."""
    replay({"crt": False, **STORE, "delete": True},
           ("write", {"d": b"a", "name": b"x.csv", "size": 300}),
           ("watcher_reads_events", {}),
           ("consumer_killed", {"which": 0, "when": "unlink", "after": 0, "reached": False}),
           ("consumers_run", {}),
           ("write", {"d": b"a", "name": b"x.csv", "size": 5000}),
           ("quiesce", {}))


def test_a_store_that_ignores_checksums_is_caught_corrupting_by_its_md5_etag() -> None:
    """Found beside the eleven: the store kept one byte flipped and answered the ETag of what
    it kept; a single PUT whose ETag was not the body's MD5 fell back to HEAD (size and our
    own sha256 metadata, both as sent), passed, and the file was deleted."""
    replay({"crt": True, "conditional": True, "checksums": "ignore", "opaque": False,
            "delete": True},
           ("write", {"d": b"a", "name": b"x.csv", "size": 300}),
           ("watcher_reads_events", {}),
           ("store_lies_next", {"lie": "corrupt"}),
           ("consumers_run", {}))


def test_a_consumer_killed_at_the_delete_leaves_its_key_to_its_own_path() -> None:
    """Found on main by the CI profile (600 sequences), after issue 23's fixes: killed
    between the set-aside and the unlink, the next claim found the file gone and acked it
    as vanished, which gave up the key although the object there is its path's. On a store
    without conditional writes, `p\\xe9` (key `p%E9`) then replaced the object of `p%E9`."""
    replay({"crt": False, "conditional": False, "checksums": "validate", "opaque": False,
            "delete": True},
           ("write", {"d": b"b", "name": b"p%E9", "size": 300}),
           ("watcher_reads_events", {}),
           ("consumer_killed", {"which": 0, "when": "unlink", "after": 0, "reached": False}),
           ("consumers_run", {}),
           ("quiesce", {}),
           ("write", {"d": b"b", "name": b"p\xe9", "size": 300}),
           ("quiesce", {}))


def test_a_path_whose_done_entry_was_purged_waits_for_an_interloper_in_flight() -> None:
    """Found by the long profile (30 min) on main: `p%E9`'s object uploaded and its entry
    purged; `p\\xe9` (same key) claimed and took the key, and its consumer died; `p%E9`
    re-sent met that reservation and failed for good as a key collision, although the
    object is its own and `p\\xe9` never wrote (it fails as the collision once retried)."""
    replay({"crt": True, **STORE, "delete": True},
           ("write", {"d": b"b", "name": b"p%E9", "size": 300}),
           ("quiesce", {}),
           ("done_entries_purged", {}),
           ("write", {"d": b"b", "name": b"p\xe9", "size": 300}),
           ("watcher_reads_events", {}),
           ("consumer_steps", {"which": 0, "action": "claim"}),
           ("consumer_killed", {"which": 0, "when": "now", "after": 0, "reached": False}),
           ("write", {"d": b"b", "name": b"p%E9", "size": 5000}),
           ("quiesce", {}))


def test_a_private_name_left_while_its_directory_was_away_goes_at_a_later_scan() -> None:
    """Found by the long profile (30 min) on main: a consumer killed between the set-aside
    and the unlink; the next claim ran while the client had renamed the directory away, so
    the file was vanished and its private name was looked for where the directory no longer
    was; renamed back, the `.sftppush-deleting.<inode>` stayed for good."""
    replay({"crt": False, "conditional": False, "checksums": "validate", "opaque": False,
            "delete": True},
           ("consumer_started", {}),
           ("rename_over", {"d": b"a", "name": b"x.csv", "size": 300}),
           ("consumers_run", {}),
           ("rescan", {}),
           ("consumer_killed", {"which": 0, "when": "now", "after": 0, "reached": False}),
           ("consumer_started", {}),
           ("rename_over", {"d": b"a", "name": b"x.csv.gz", "size": 300}),
           ("consumer_killed", {"which": 0, "when": "unlink", "after": 0, "reached": False}),
           ("consumers_run", {}),
           ("consumer_started", {}),
           ("dir_renamed_away", {"d": b"a"}),
           ("quiesce", {}),
           ("dir_renamed_back", {"d": b"a"}),
           ("quiesce", {}))


def test_a_set_aside_in_a_directory_made_unwritable_fails_no_entry_as_internal() -> None:
    """Found by the long profile (20 min) on main: killed between the set-aside and the
    unlink, then the directory made immutable; the next claim's removal of the private
    name met EPERM, which failed the entry as an internal error, and nothing removed the
    name once the directory was writable again. Now the name stays while the directory
    cannot be written, and the first rescan after that hands the entry back."""
    replay({"crt": False, "conditional": False, "checksums": "validate", "opaque": False,
            "delete": True},
           ("open_and_hold", {"d": b"b", "name": b"n\nl.txt"}),
           ("consumer_killed", {"which": 0, "when": "unlink", "after": 0, "reached": True}),
           ("held_file_closed", {"which": 0, "write_first": True}),
           ("watcher_reads_events", {}),
           ("consumers_run", {}),
           ("consumer_started", {}),
           ("dir_unwritable", {"d": b"b", "on": True}),
           ("consumers_run", {}),
           ("consumers_run", {}),
           ("consumers_run", {}),
           ("consumers_run", {}),
           ("quiesce", {}),
           ("dir_unwritable", {"d": b"b", "on": False}),
           ("quiesce", {}))


def test_a_held_file_first_written_while_its_directory_is_away_keeps_its_own_key() -> None:
    """Found by the long profile at a7d2100, in the model's own bookkeeping: a file held
    open, first written to while its directory was renamed out of the source, was recorded
    under the name outside the source as well, and the key check raised ValueError for it."""
    replay({"crt": False, "conditional": False, "checksums": "validate", "opaque": False,
            "delete": False},
           ("consumer_started", {}),
           ("open_and_hold", {"d": b"a", "name": b"rep "}),
           ("held_file_closed", {"which": 0, "write_first": False}),
           ("open_and_hold", {"d": b"a", "name": b"rep "}),
           ("consumers_run", {}),
           ("delete_after_upload_switched", {}),
           ("consumers_run", {}),
           ("dir_renamed_away", {"d": b"a"}),
           ("held_file_written", {"which": 0}),
           ("dir_renamed_back", {"d": b"a"}),
           ("quiesce", {}))


def test_a_multipart_object_overwritten_after_its_completion_is_not_taken_as_verified() -> None:
    """Found by the long profile at 564ab98 (and there since the model began): on a store that
    ignores checksums and answers opaque ETags (SSE-KMS), someone else wrote the key right
    after a multipart upload completed, with as many bytes; HEAD's size matched, the file
    was deleted, and the store held the other bytes."""
    replay({"crt": False, "conditional": False, "checksums": "ignore", "opaque": True,
            "delete": False},
           ("consumer_started", {}),
           ("consumers_run", {}),
           ("delete_after_upload_switched", {}),
           ("store_lies_next", {"lie": "clobber"}),
           ("rename_over", {"d": b"a", "name": b"big.bin", "size": 300}),
           ("consumers_run", {}),
           ("rescan", {}),
           ("consumers_run", {}))


def test_a_private_name_in_a_directory_away_past_a_purge_goes_once_it_is_back() -> None:
    """Found by the long profile at 0f85dc7 (34 min): a consumer killed between its set-aside
    and its unlink; the client renamed the directory away, the entry was done as vanished,
    and a purge dropped it before the directory came back, so no entry was left to take
    the `.sftppush-deleting.<inode>` away."""
    replay({"crt": False, "conditional": False, "checksums": "validate", "opaque": False,
            "delete": False},
           ("consumer_started", {}),
           ("store_fails_next", {"n": 2}),
           ("delete_after_upload_switched", {}),
           ("consumers_run", {}),
           ("rename_over", {"d": b"a", "name": b"x.csv", "size": 300}),
           ("rename_over", {"d": b"b", "name": b"x.csv", "size": 300}),
           ("consumer_killed", {"after": 0, "reached": False, "when": "unlink", "which": 0}),
           ("rescan", {}),
           ("consumers_run", {}),
           ("consumer_started", {}),
           ("delete_after_upload_switched", {}),
           ("dir_renamed_away", {"d": b"b"}),
           ("dir_renamed_away", {"d": b"a"}),
           ("quiesce", {}),
           ("consumers_run", {}),
           ("consumers_run", {}),
           ("done_entries_purged", {}),
           ("dir_renamed_back", {"d": b"b"}),
           ("quiesce", {}))


def test_a_completion_refused_for_a_part_stored_damaged_starts_the_upload_over() -> None:
    """Found by the long profile at eca2f43 (and there since the model began): a store that
    validates checksums stored one part otherwise than it received it; the completion was
    refused (BadDigest, the whole-object checksum), and every retry resumed the same upload,
    joined the same parts and was refused again: the file never got uploaded."""
    replay({"crt": False, "conditional": False, "checksums": "validate", "opaque": True,
            "delete": False},
           ("write", {"d": b"a", "name": b"x.csv", "size": 300}),
           ("done_entries_purged", {}),
           ("rename_over", {"d": b"a", "name": b"big.bin", "size": 300}),
           ("rescan", {}),
           ("store_lies_next", {"lie": "corrupt"}),
           ("consumers_run", {}),
           ("quiesce", {}))


def test_a_key_that_moved_after_a_purge_is_not_held_to_the_other_paths_deletions() -> None:
    """The model's own false positive (long profile at a6913a8): on a store without
    conditional writes a key may move to another path once a purge made the queue forget
    (SPEC 3); that path's retried PUT (its answer lost) was checked against the version of
    the first path that was deleted, "version 1 landed after version 4"."""
    replay({"crt": False, "conditional": False, "checksums": "validate", "opaque": False,
            "delete": False},
           ("consumer_started", {}),
           ("delete_after_upload_switched", {}),
           ("open_and_hold", {"d": b"b", "name": b"p%E9"}),
           ("rename_over", {"d": b"b", "name": b"p\xe9", "size": 300}),
           ("quiesce", {}),
           ("done_entries_purged", {}),
           ("failed_replayed", {}),
           ("store_loses_next_answer", {}),
           ("consumers_run", {}))


def test_a_kept_file_is_uploaded_again_once_someone_else_replaced_its_object() -> None:
    """The model's own false positive (long profile at 61b163c): a file kept in a directory
    the service cannot write, replayed after someone else wrote its key, is rightly uploaded
    again (the recorded upload's object is gone); the model counted that as a duplicate."""
    replay({"crt": False, "conditional": False, "checksums": "validate", "opaque": False,
            "delete": True},
           ("consumer_started", {}),
           ("open_and_hold", {"d": b"a", "name": b"n\nl.txt"}),
           ("dir_unwritable", {"d": b"a", "on": True}),
           ("quiesce", {}),
           ("delete_after_upload_switched", {}),
           ("failed_replayed", {}),
           ("someone_else_writes_the_key", {"d": b"a", "name": b"n\nl.txt"}),
           ("quiesce", {}))


def test_the_path_that_owns_an_object_is_not_refused_for_a_superseded_entrys_key() -> None:
    """Long profile at a6913a8: p\\xe9 owns the object, its done entry purged; p%E9's
    replayed entry takes the key, fails once and is superseded, keeping the key with no
    upload recorded. p\\xe9's next version was refused before any request went out, "failed
    as colliding with its own object". Such a holder is a doubt: the object decides."""
    replay({"crt": False, "conditional": True, "checksums": "validate", "opaque": True,
            "delete": False},
           ("consumer_started", {}),
           ("delete_after_upload_switched", {}),
           ("open_and_hold", {"d": b"b", "name": b"p%E9"}),
           ("rename_over", {"d": b"b", "name": b"p\xe9", "size": 300}),
           ("consumers_run", {}),
           ("delete_after_upload_switched", {}),
           ("delete_after_upload_switched", {}),
           ("quiesce", {}),
           ("failed_replayed", {}),
           ("done_entries_purged", {}),
           ("store_fails_next", {"n": 1}),
           ("store_down", {"down": True}),
           ("consumers_run", {}),
           ("resend_keeping_mtime", {"d": b"b", "name": b"p%E9"}),
           ("open_and_hold", {"d": b"b", "name": b"p\xe9"}),
           ("watcher_reads_events", {}),
           ("consumers_run", {}))


def test_a_superseded_entry_whose_put_landed_still_keeps_its_key_on_a_store_without_if_none_match(
        ) -> None:
    """The other side of the doubt above: p%E9's PUT landed, its answer lost, and its
    consumer died before the retry; the entry was superseded. On a store that ignores
    If-None-Match only a look at the object (its sftppush-source and name) stops p\\xe9
    from replacing p%E9's object; without it p\\xe9 did, and p%E9's next version then
    failed as colliding with its own object."""
    replay({"crt": False, "conditional": False, "checksums": "validate", "opaque": False,
            "delete": False},
           ("consumer_started", {}),
           ("write", {"d": b"b", "name": b"p%E9", "size": 300}),
           ("watcher_reads_events", {}),
           ("store_loses_next_answer", {}),
           ("consumer_killed", {"which": 0, "when": "request", "after": 1, "reached": True}),
           ("consumers_run", {}),
           ("time_passes", {"seconds": 61.0, "reached": True}),
           ("consumer_started", {}),
           ("resend_keeping_mtime", {"d": b"b", "name": b"p%E9"}),
           ("watcher_reads_events", {}),
           ("open_and_hold", {"d": b"b", "name": b"p%E9"}),
           ("write", {"d": b"b", "name": b"p\xe9", "size": 300}),
           ("watcher_reads_events", {}),
           ("consumers_run", {}),
           ("time_passes", {"seconds": 31.0, "reached": True}),
           ("consumers_run", {}))


def test_a_private_name_kept_by_an_unwritable_directory_past_a_purge_goes_later() -> None:
    """Found by the long profile at 479f71d (and there at 8350c7f): a consumer killed
    between its set-aside and its unlink; the next claim could not remove the private name
    (the directory immutable), acked the entry as vanished, and a purge dropped it before a
    rescan met the name in the writable directory again: nothing was left to remove it."""
    replay({"crt": False, "conditional": False, "checksums": "validate", "opaque": False,
            "delete": False},
           ("consumer_started", {}),
           ("rename_over", {"d": b"b", "name": b"x.csv", "size": 300}),
           ("delete_after_upload_switched", {}),
           ("consumer_killed", {"after": 0, "reached": False, "when": "unlink", "which": 0}),
           ("rescan", {}),
           ("consumers_run", {}),
           ("consumer_started", {}),
           ("dir_unwritable", {"d": b"b", "on": True}),
           ("quiesce", {}),
           ("dir_unwritable", {"d": b"b", "on": False}),
           ("done_entries_purged", {}),
           ("rename_over", {"d": b"a", "name": b"x.csv", "size": 300}))
