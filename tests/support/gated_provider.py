"""A provider stand-in whose first token request waits until the test releases it.

So a test can act while a refresh is causally in flight (the request has reached the
provider and has not been answered), instead of hoping a delay is long enough.
"""

from __future__ import annotations

import threading

from tests.support.provider_stub import ProviderStub

# The longest the first token request waits for the release: the slow provider
# answers after 8 s; the tests release it sooner, and this ceiling is kept well above what
# a test does meanwhile on a loaded machine, since answering early would fail the test.
HOLD_SECONDS = 20


class GatedProvider(ProviderStub):
    """:class:`ProviderStub` whose first ``/token`` request waits for :attr:`release`.

    :attr:`entered` is set when that request arrives, :attr:`answered` once it is answered.
    Later requests are answered at once.
    """

    def __init__(self, **options):
        super().__init__(**options)
        self.entered, self.release, self.answered = (threading.Event() for _ in range(3))
        self._first = threading.Lock()

    def _answer(self, request, respond):
        if request.path == "/token" and self._first.acquire(blocking=False):
            self.entered.set()
            self.release.wait(timeout=HOLD_SECONDS)
            try:
                return super()._answer(request, respond)
            finally:
                self.answered.set()
        return super()._answer(request, respond)
