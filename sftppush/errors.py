"""The only error vocabulary of sftppush.

Rooms raise these; `cli.py` maps them to exit codes, and the consumer's policy (policy.py)
tells TransientError from PermanentError, the only two kinds of failure an upload can have.
Nothing here may import another room.
"""


class SftppushError(Exception):
    """Base of every error sftppush raises on purpose: its message is one line for an operator."""


class ConfigError(SftppushError):
    """The configuration or the command line is wrong: exit status 2, nothing started."""


class QueueError(SftppushError):
    """The queue file is missing, corrupt or unusable: exit status 1."""


class TransientError(SftppushError):
    """Worth retrying as it is (network, 5xx, throttling): never makes an entry failed."""


class Throttled(TransientError):
    """The store asks us to slow down (503 SlowDown, 429, a throttling code): transient, and
    a sign of too many requests in flight."""


# Why an entry failed, for counters and metric labels: a few fixed values, never the message
# (one label value per path or key would grow without bound). "other": the store's refusals
# (access denied, no such bucket, ...) and whatever has no class of its own.
# An entry uploaded but not deleted fails as "no_lease" or "cannot_delete" (outcomes.Undeleted).
REASONS = ("corrupt", "too_large", "key_collision", "key_too_long", "refused", "permission",
           "unreadable", "unsupported", "internal", "other")


class PermanentError(SftppushError):
    """Retrying the same way will not help; counts an attempt, failed at max_attempts.

    `reason` is its class (one of REASONS), given where it is raised. `retry_after` asks
    for a short fixed delay instead of the growing one, for conditions that usually clear
    by themselves (a hard link that is the middle of a link+unlink rename). `final` fails
    the entry at once: no attempt can help until an operator acts (a key collision).
    """

    def __init__(self, message: str, retry_after: float | None = None,
                 final: bool = False, reason: str = "other") -> None:
        if reason not in REASONS:
            raise ValueError(f"unknown failure reason {reason!r}")
        super().__init__(message)
        self.retry_after = retry_after
        self.final = final
        self.reason = reason
