"""The claims one consumer process holds, and their leases.

Owns what is held (entry id → Claim), renewing every lease a third of the way through it,
and the check before a delete that the lease is still ours with time to spare. A lease lost
is only marked here (it only goes to True); what that means for the entry is the consumer's.
It never starts, sends or settles work.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

from sftppush.queue.entries import Entry
from sftppush.queue.lifecycle import Entries


@dataclass(slots=True)
class Claim:
    """One entry this process holds, with its lease as this process last renewed it.
    `lost` is set once, by whichever thread learns it (a plain flag: it only goes to True)."""

    entry: Entry
    expires: float
    lost: bool = False


class Leases:
    """The held claims of one process and the timer that renews their leases."""

    def __init__(self, entries: Entries, seconds: float, monotonic: Callable[[], float]
                 ) -> None:
        self.entries = entries
        self.clock = entries.file.clock  # the queue's: leases are written by it
        self.seconds = seconds
        self.monotonic = monotonic
        self.held: dict[int, Claim] = {}
        self.next_renew = 0.0

    def hold(self, entries: Iterable[Entry]) -> list[Claim]:
        """Claims for freshly claimed entries: the lease is the queue's (its clock was read
        inside the claim), never longer."""
        claims = [Claim(entry, entry.due) for entry in entries]
        self.held.update((c.entry.id, c) for c in claims)
        return claims

    def let_go(self, claim: Claim) -> None:
        # A claim this process took again after its lease ran out (e.g. while stopped) has
        # a new owner token; the older run's outcome is stale and must not drop the new one.
        if self.held.get(claim.entry.id) is claim:
            del self.held[claim.entry.id]

    def expired(self, claim: Claim) -> bool:
        """Lost, or run out by the queue's clock: start nothing more for it."""
        return claim.lost or self.clock() >= claim.expires

    def still_ours(self, claim: Claim) -> bool:
        """Checked just before a delete: the lease must be ours with time to spare."""
        if claim.lost:
            return False
        if self.clock() < claim.expires - min(5.0, self.seconds / 4):
            return True
        lost, expires = self.entries.renew_leases([claim.entry], self.seconds)
        if lost:
            claim.lost = True
            return False
        claim.expires = expires
        return True

    def start(self) -> None:
        """The first renewal a third of a lease from now."""
        self.next_renew = self.monotonic() + self.seconds / 3

    def renew_if_due(self) -> None:
        if self.monotonic() >= self.next_renew:
            self._renew()
            self.next_renew = self.monotonic() + self.seconds / 3

    def _renew(self) -> None:
        claims = [c for c in list(self.held.values()) if not c.lost]
        if not claims:
            return
        renewed, expires = self.entries.renew_leases([c.entry for c in claims], self.seconds)
        lost = {e.id for e in renewed}
        for c in claims:
            if c.entry.id in lost:
                c.lost = True
            else:
                c.expires = expires
