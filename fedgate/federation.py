"""The mount table: every configured site's adaptor, plus its health.

Shared by the gateway and the staging service.  Building it does no network
I/O; site health is probed lazily and cached for a short time, so a site that
is down costs one probe per interval, not one per request.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass

from adaptors import create_adaptor, errors
from adaptors.base import Adaptor, AdaptorContext
from fedgate.config import Config
from fedgate.secrets import SecretBox
from fedgate.store.base import StateStore

log = logging.getLogger(__name__)


@dataclass
class SiteStatus:
    ok: bool
    message: str
    checked_at: float


class Federation:
    """Adaptors by site name, built from a validated :class:`Config`."""

    def __init__(self, config: Config, store: StateStore, status_ttl_s: float = 15.0) -> None:
        self.config = config
        self.store = store
        self.box = SecretBox.for_data_dir(config.data_dir, config.secret_key)
        self.context = AdaptorContext(data_dir=config.data_dir, encrypt=self.box.encrypt,
                                      decrypt=self.box.decrypt, records=store)
        self.sites: dict[str, Adaptor] = {}
        for opts in config.sites:
            self.sites[opts["name"]] = create_adaptor(opts, self.context)
        self._status: dict[str, SiteStatus] = {}
        self._status_lock = threading.Lock()
        self._status_ttl = status_ttl_s

    def __iter__(self) -> Iterator[Adaptor]:
        return iter(self.sites.values())

    def get(self, name: str) -> Adaptor:
        try:
            return self.sites[name]
        except KeyError:
            raise errors.NotFound(f"no site named {name!r}", "/") from None

    def status(self, name: str, refresh: bool = False) -> SiteStatus:
        """Cached probe result of a site (probes at most once per TTL)."""
        now = time.monotonic()
        with self._status_lock:
            st = self._status.get(name)
        if st is not None and not refresh and now - st.checked_at < self._status_ttl:
            return st
        try:
            self.get(name).probe()
            st = SiteStatus(True, "ok", now)
        except errors.AdaptorError as exc:
            st = SiteStatus(False, exc.message, now)
            log.warning("site %s unavailable: %s", name, exc.message)
        except Exception as exc:  # a probe must never take the gateway down
            st = SiteStatus(False, f"probe failed: {exc.__class__.__name__}", now)
            log.exception("site %s probe crashed", name)
        with self._status_lock:
            self._status[name] = st
        return st

    def last_status(self, name: str) -> SiteStatus | None:
        """The last known status, without probing (None: not probed yet)."""
        with self._status_lock:
            return self._status.get(name)

    def start_prober(self, interval_s: float = 15.0) -> threading.Event:
        """Probe every site now and then every ``interval_s`` in a daemon thread,
        so that request paths only read cached statuses.  Set the returned event
        to stop."""
        stop = threading.Event()

        def loop() -> None:
            while not stop.is_set():
                for name in list(self.sites):
                    if stop.is_set():
                        return
                    self.status(name, refresh=True)
                stop.wait(interval_s)

        threading.Thread(target=loop, name="fedgate-prober", daemon=True).start()
        return stop

    def mark(self, name: str, ok: bool, message: str) -> None:
        """Record what a real operation learnt about a site's health."""
        with self._status_lock:
            self._status[name] = SiteStatus(ok, message, time.monotonic())

    def close(self) -> None:
        for a in self.sites.values():
            try:
                a.close()
            except Exception:  # closing must not raise at shutdown
                log.debug("closing site %s failed", a.name, exc_info=True)
