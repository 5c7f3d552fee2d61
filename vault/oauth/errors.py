"""How a request to a provider can fail, in the words the rest of the vault acts on.

* :class:`GrantRejected`: the provider refused the credentials (``invalid_grant``,
  ``unauthorized_client``, a key exchange answered 400/401/403); only a person can fix it.
* :class:`ProviderFailure`: 5xx, 429, timeout, network or discovery trouble; try later,
  not before ``retry_after`` seconds when the provider said so.

Messages never carry a credential; callers scrub them once more against the values they sent.
"""

from __future__ import annotations


class GrantRejected(Exception):
    """The provider refused the stored grant or credentials; a person must reconnect."""


class ProviderFailure(Exception):
    """The provider could not be used right now; ``retry_after`` is its hint in seconds."""

    def __init__(self, message: str, retry_after: float | None = None):
        super().__init__(message)
        self.retry_after = retry_after
