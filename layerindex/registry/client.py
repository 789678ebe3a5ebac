"""A Registry HTTP API v2 client: ping, token/basic auth, manifests, blobs, tag lists.

One client per run, shared by worker threads (a ``requests.Session`` per thread, locks around the
caches). Every HTTP exchange goes through ``_request``, where the retry policy lives
(``retry.py``): connection errors, timeouts and 5xx are tried again after a jittered back-off, a
429 after its ``Retry-After`` when that is short, nothing else; a host that gave no answer is
not asked again until ``reachability.reset()`` (reachability.py). A blob cut mid-stream resumes with
``Range`` (``transport.BlobStream``). Docker Hub's ``RateLimit-*`` headers are remembered per
registry (``rate_limit``) and a low quota is logged once.
``Authorization`` is sent only to the host (and port and scheme) it was meant for: redirects are
followed by hand and a blob redirect to a CDN goes without it (S3 refuses two auth mechanisms;
ggcr ``transport/bearer.go`` does the same).
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import random
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial
from urllib.parse import urlencode, urljoin

import requests

import layerindex
from layerindex.errors import (
    AuthError,
    DigestMismatch,
    NetworkError,
    NotFound,
    RateLimited,
    RegistryError,
    redact,
)
from layerindex.reference import (
    DOCKER_HUB,
    DOCKER_HUB_ALIASES,
    Reference,
    digest_problem,
    is_tag,
)
from layerindex.registry.auth import (
    Challenge,
    TokenCache,
    choose_challenge,
    parse_challenges,
    parse_token_answer,
)
from layerindex.registry.credentials import Credentials, Keychain, default_keychain
from layerindex.registry.manifest import ACCEPT_MANIFESTS
from layerindex.registry.manifest import FetchedManifest as FetchedManifest
from layerindex.registry.reachability import GIVE_UP_AFTER, HostGivenUp, Reachability
from layerindex.registry.retry import RETRY_STATUSES, Quota, RetryPolicy, parse_quota, say_duration
from layerindex.registry.transport import (
    BlobReader,
    BlobStream,
    Origin,
    Transport,
    decompress,
    host_of,
    is_json,
    is_loopback,
    loggable_url,
    origin_of,
    read_body,
    retry_after,
    server_message,
)

log = logging.getLogger("layerindex")

MANIFEST_MAX_BYTES = 4 * 1024 * 1024  # manifests are kilobytes; a bigger body is not a manifest
CONFIG_MAX_BYTES = 8 * 1024 * 1024  # an image config, read whole (get_blob_bytes)
TAG_PAGE_MAX_BYTES = 16 * 1024 * 1024
ERROR_BODY_MAX_BYTES = 64 * 1024
TAG_PAGE_SIZE = 1000  # ECR refuses n > 1000 (ggcr#1091)
TAG_PAGES_MAX = 1000  # a tag list is followed this many pages at most (a registry's Link loop)
TAGS_MAX = 100_000  # and this many tags: the largest public repositories have tens of thousands
# Seconds for the whole body of a manifest, config, token, tag page or error: they are
# kilobytes, a read timeout bounds one read only, and a server may send a byte a second.
BODY_DEADLINE = 60.0
# A blob has no deadline (2 GB on a slow link) but must progress: fewer bytes than this in
# this many seconds is a stall, resumed as a cut connection is.
BLOB_PROGRESS = (64 * 1024, 60.0)
BLOB_BUFFER = 1024 * 1024
BLOB_RESUMES = 5  # a blob cut mid-stream is resumed this many times at most
DOCKER_HUB_API_HOSTS = frozenset({"registry-1.docker.io", *DOCKER_HUB_ALIASES})


def _hash(algorithm: str, data: bytes) -> str:
    return f"{algorithm}:{hashlib.new(algorithm, data).hexdigest()}"


def _digest_of(data: bytes, like: str) -> str:
    """The digest of ``data`` with the algorithm of ``like`` ("sha512:…" → sha512)."""
    return _hash(like.partition(":")[0], data)


def _login_hint(registry: str) -> str:
    target = "" if registry == DOCKER_HUB else f" {registry}"
    return f"`docker login{target}` or `podman login {registry}`"


@dataclass
class _Host:
    """What the ping of one registry API host taught us."""

    base_url: str  # "https://ghcr.io"
    challenge: Challenge | None  # None: the registry asks for no auth


class RegistryClient:
    """Registry API v2 over requests; see the module docstring for the rules it keeps."""

    def __init__(
        self,
        keychain: Keychain | None = None,
        *,
        insecure: Iterable[str] = (),
        connect_timeout: float = 10.0,
        read_timeout: float = 60.0,
        user_agent: str | None = None,
        clock: Callable[[], float] = time.monotonic,
        retries: int = 4,
        backoff_base: float = 0.5,
        max_backoff: float = 30.0,
        max_retry_after: float = 60.0,
        give_up_after: float = GIVE_UP_AFTER,
        blob_resumes: int = BLOB_RESUMES,
        sleep: Callable[[float], None] = time.sleep,
        jitter: Callable[[], float] = random.random,
        body_deadline: float = BODY_DEADLINE,
        blob_progress: tuple[int, float] = BLOB_PROGRESS,
    ) -> None:
        """``retries`` more attempts after the first on connection errors, timeouts, 5xx and
        bodies cut short, waiting ``jitter() * min(max_backoff, backoff_base * 2**n)`` seconds
        before retry ``n``; a 429 waits its ``Retry-After`` up to ``max_retry_after`` seconds,
        else RateLimited. ``read_timeout`` applies to every read of a body, blobs included;
        ``body_deadline`` to every body but a blob's, which must make ``blob_progress``. A host
        that gives no answer is given up until ``reachability.reset()`` (reachability.py)."""
        self.keychain = keychain if keychain is not None else default_keychain()
        self.insecure = frozenset(h.strip().lower() for h in insecure if h.strip())
        self.timeout = (connect_timeout, read_timeout)
        self.user_agent = user_agent or f"layerindex/{layerindex.__version__}"
        self.tokens = TokenCache(clock)
        self.reachability = Reachability(give_up_after=give_up_after, clock=clock)
        self.transport = Transport(
            timeout=self.timeout, user_agent=self.user_agent, reachability=self.reachability
        )
        self.retry = RetryPolicy(
            retries=max(0, retries),
            backoff_base=backoff_base,
            max_backoff=max_backoff,
            max_retry_after=max_retry_after,
            sleep=sleep,
            jitter=jitter,
        )
        self.blob_resumes = max(0, blob_resumes)
        self.body_deadline = body_deadline
        self.blob_progress = blob_progress
        self._quotas: dict[str, Quota] = {}
        self._quota_warned: set[str] = set()
        self._lock = threading.Lock()
        self._ping_locks: dict[str, threading.Lock] = {}
        self._hosts: dict[str, _Host] = {}
        self._credentials: dict[tuple[str, str], Credentials | None] = {}
        self._downloads: set[BlobStream] = set()  # blobs open now (abandon_downloads)

    # --- HTTP ------------------------------------------------------------------------------------

    def _request(
        self,
        method: str,
        url: str,
        *,
        headers: Mapping[str, str] | None = None,
        authorization: str | None = None,
        data: Mapping[str, str] | None = None,
        stream: bool = False,
        quota_of: Reference | None = None,
        origin: Origin | None = None,
    ) -> requests.Response:
        """Every HTTP exchange of the client passes here, and is retried here: on no answer
        and on 5xx after a back-off, on 429 after ``Retry-After`` when that is reasonable.
        The last answer is returned whatever its status; ``_check`` turns it into an error.
        ``quota_of``: the image whose registry's ``RateLimit-*`` headers these would be."""
        policy = self.retry
        for attempt in range(policy.attempts):
            final = attempt + 1 == policy.attempts
            tried_at = self.reachability.clock()
            try:
                response = self.transport.request(
                    method,
                    url,
                    headers=headers,
                    authorization=authorization,
                    data=data,
                    stream=stream,
                    origin=origin,
                )
            except HostGivenUp:
                raise  # nothing was asked
            except NetworkError as exc:
                failed = exc.host or host_of(url)
                too_long = self.reachability.failing_too_long(failed, tried_at)
                # permanent: no such host name, a certificate that fails verification
                if too_long or final or exc.permanent:
                    notes = [f"tried {attempt + 1} times"] if attempt else []
                    if too_long:
                        notes.append(
                            f"no answer for {say_duration(self.reachability.give_up_after)}"
                        )
                    tried = f" ({', '.join(notes)})" if notes else ""
                    error = NetworkError(f"{exc}{tried}", host=exc.host, permanent=exc.permanent)
                    self.reachability.give_up(failed, str(error))
                    raise error from None
                self._pause(method, url, str(exc), policy.backoff(attempt), attempt)
                continue
            if quota_of is not None:
                self._note_quota(quota_of, response)
            wait = None if final else self._retry_wait(response, attempt)
            if wait is None:
                return response
            response.close()
            self._pause(method, url, f"{response.status_code}", wait, attempt)
        raise AssertionError("unreachable: the last attempt returns or raises")

    def _answer(
        self,
        send: Callable[[], requests.Response],
        check: Callable[[requests.Response], None],
        limit: int,
        what: str,
    ) -> tuple[bytes, requests.Response]:
        """``send()``'s answer, ``check``ed and its body read whole (at most ``limit`` bytes):
        a body cut short is asked for again, as ``_request`` retries no answer (a blob resumes
        instead). The response returned is closed; its headers and URL are still there."""
        policy = self.retry
        for attempt in range(policy.attempts):
            with send() as response:
                try:
                    check(response)
                    return read_body(response, limit, what, self.body_deadline), response
                except NetworkError as exc:
                    if attempt + 1 == policy.attempts:
                        tried = f" (tried {policy.attempts} times)" if attempt else ""
                        raise RegistryError(f"{exc}{tried}") from None
                    why = str(exc)
            method = response.request.method if response.request else None
            self._pause(method or "GET", response.url, why, policy.backoff(attempt), attempt)
        raise AssertionError("unreachable: the last attempt returns or raises")

    def _retry_wait(self, response: requests.Response, attempt: int) -> float | None:
        """Seconds to wait before trying ``response``'s request again, None to give it up."""
        status = response.status_code
        policy = self.retry
        if status in RETRY_STATUSES:
            # A 503 may say how long it will be; more than we wait for, and back-off it is.
            said = retry_after(response.headers.get("Retry-After"))
            backoff = policy.backoff(attempt)
            if said is not None and said <= policy.max_retry_after:
                return max(said, backoff)
            return backoff
        if status != 429:
            return None
        said = retry_after(response.headers.get("Retry-After"))
        if said is None:
            quota = _quota_of(response)
            if quota is not None and quota.remaining == 0:
                return None  # the quota is gone for its window: hours, not seconds
            said = policy.backoff(attempt)
        return said if said <= policy.max_retry_after else None

    def _pause(self, method: str, url: str, why: str, seconds: float, attempt: int) -> None:
        log.info(
            "%s %s: %s; trying again in %.1f s (attempt %d of %d)",
            method,
            loggable_url(url),
            why,
            seconds,
            attempt + 2,
            self.retry.attempts,
        )
        self.retry.sleep(seconds)

    # --- rate limits -----------------------------------------------------------------------------

    def _note_quota(self, ref: Reference, response: requests.Response) -> None:
        quota = _quota_of(response)
        if quota is None:
            return
        registry = ref.registry
        with self._lock:
            self._quotas[registry] = quota
            warn = quota.low and registry not in self._quota_warned
            if warn:
                self._quota_warned.add(registry)
        if warn:
            window = f" per {say_duration(quota.window_s)}" if quota.window_s else ""
            anonymous = self._credentials_for(ref) is None
            log.warning(
                "%s: %d of %d pulls left%s%s",
                registry,
                quota.remaining,
                quota.limit,
                window,
                f"; {_quota_hint(registry, hub_like=True)}" if anonymous else "",
            )

    def rate_limit(self, registry: str) -> tuple[int, int, int | None] | None:
        """The last ``RateLimit-*`` values ``registry`` ("docker.io", "ghcr.io", a host:port)
        sent: (remaining, limit, window in seconds or None), or None if it sent none."""
        name = registry.strip().lower()
        key = DOCKER_HUB if name in DOCKER_HUB_API_HOSTS else name
        with self._lock:
            quota = self._quotas.get(key)
        return None if quota is None else (quota.remaining, quota.limit, quota.window_s)

    # --- auth ------------------------------------------------------------------------------------

    def _base_url(self, api_host: str) -> str:
        plain = api_host.lower() in self.insecure or is_loopback(api_host)
        return f"{'http' if plain else 'https'}://{api_host}"

    def _host(self, ref: Reference) -> _Host:
        """Ping ``/v2/`` once per registry host to learn whether and how it wants auth."""
        with self._lock:
            known = self._hosts.get(ref.api_host)
        if known is not None:
            return known
        with self._lock:
            ping_lock = self._ping_locks.setdefault(ref.api_host, threading.Lock())
        with ping_lock:  # threads starting together ping a registry once, not once each
            with self._lock:
                known = self._hosts.get(ref.api_host)
            return known if known is not None else self._ping(ref)

    def _ping(self, ref: Reference) -> _Host:
        base_url = self._base_url(ref.api_host)
        response = self._request("GET", f"{base_url}/v2/", stream=True)
        with response:
            if response.status_code == 401:
                challenge = choose_challenge(
                    parse_challenges(response.headers.get("WWW-Authenticate", ""))
                )
                if challenge is None:
                    raise AuthError(
                        f"{ref.api_host} asks for authentication with a scheme layerindex "
                        "does not support (neither Bearer nor Basic)"
                    )
            elif response.status_code == 404:
                raise RegistryError(
                    f"{ref.api_host} does not serve the Registry API v2 (GET /v2/ answered 404)"
                )
            else:
                self._check(response, ref, f"the API root of {ref.api_host}", "")
                challenge = None
        host = _Host(base_url, challenge)
        with self._lock:
            self._hosts[ref.api_host] = host
        return host

    def _credentials_for(self, ref: Reference) -> Credentials | None:
        key = (ref.registry, ref.repository)
        with self._lock:
            if key in self._credentials:
                return self._credentials[key]
        found = self.keychain.resolve(ref.registry, ref.repository)
        with self._lock:
            self._credentials[key] = found
        return found

    def _authorization(
        self, host: _Host, ref: Reference, scopes: tuple[str, ...], *, fresh: bool = False
    ) -> str | None:
        challenge = host.challenge
        if challenge is None:
            return None
        creds = self._credentials_for(ref)
        if challenge.scheme == "basic":
            if creds is None or creds.username is None or creds.password is None:
                return None
            pair = f"{creds.username}:{creds.password}".encode()
            return "Basic " + base64.b64encode(pair).decode("ascii")
        return "Bearer " + self._token(ref, challenge, scopes, creds, fresh=fresh)

    def _token(
        self,
        ref: Reference,
        challenge: Challenge,
        scopes: tuple[str, ...],
        creds: Credentials | None,
        *,
        fresh: bool,
    ) -> str:
        realm = challenge.params.get("realm")
        if not realm:
            raise AuthError(f"{ref.api_host} asked for a Bearer token but named no realm")
        service = challenge.params.get("service", "")
        key = (ref.api_host, realm, service, scopes)
        if not fresh:
            cached = self.tokens.get(key)
            if cached is not None:
                return cached
        realm_host = redact(host_of(realm))
        query = [("service", service), *(("scope", s) for s in scopes)]
        send = partial(
            self._request, "GET", realm + ("&" if "?" in realm else "?") + _urlencode(query)
        )
        if creds is not None and creds.username is not None and creds.password is not None:
            pair = f"{creds.username}:{creds.password}".encode()
            basic = "Basic " + base64.b64encode(pair).decode("ascii")
            send = partial(send, authorization=basic)
        elif creds is not None and creds.identity_token is not None:
            refresh = {
                "grant_type": "refresh_token",
                "refresh_token": creds.identity_token,
                "service": service,
                "scope": " ".join(scopes),
                "client_id": "layerindex",
            }
            send = partial(self._request, "POST", realm, data=refresh)

        def check(response: requests.Response) -> None:
            if response.status_code in (401, 403):
                who = "the credentials" if creds is not None else "an anonymous token"
                raise AuthError(
                    f"the token service {realm_host} refused {who} for {ref.repo_key} "
                    f"({response.status_code}); log in with {_login_hint(ref.registry)}"
                )
            self._check(response, ref, f"a token for {ref.repo_key} from {realm_host}", "")

        what = f"token answer from {realm_host}"
        body, _ = self._answer(partial(send, stream=True), check, ERROR_BODY_MAX_BYTES, what)
        token = parse_token_answer(body, self.tokens.clock())
        if token is None:
            raise AuthError(f"the token service {realm_host} answered without a usable token")
        self.tokens.put(key, token)
        return token.value

    def _auth_error(self, ref: Reference, challenge: Challenge | None, status: int) -> AuthError:
        creds = self._credentials_for(ref)
        scope_note = (
            ", insufficient_scope"
            if challenge and challenge.params.get("error") == "insufficient_scope"
            else ""
        )
        if creds is None:
            return AuthError(
                f"{ref.repo_key}: the registry requires authentication ({status}{scope_note}) "
                f"and no credentials were found for {ref.registry}; log in with "
                f"{_login_hint(ref.registry)}, or check the repository exists (registries "
                "such as Docker Hub answer 401 for a repository that does not exist)"
            )
        return AuthError(
            f"{ref.repo_key}: the registry refused the credentials for {ref.registry} "
            f"({status}{scope_note}); the account may not be allowed to pull this repository "
            f"or it may not exist; check {_login_hint(ref.registry)}"
        )

    def _registry_request(
        self,
        ref: Reference,
        method: str,
        path: str,
        *,
        headers: Mapping[str, str] | None = None,
        stream: bool = True,
    ) -> requests.Response:
        """A request to ``ref``'s registry with auth; a 401 gets one fresh token and one retry.
        ``path`` may be a URL the registry named (a ``Link``): the auth goes only to the
        registry's own origin all the same."""
        host = self._host(ref)
        url = path if "://" in path else host.base_url + path
        origin = origin_of(host.base_url)
        scopes: tuple[str, ...] = (f"repository:{ref.repository}:pull",)
        authorization = self._authorization(host, ref, scopes)
        response = self._request(
            method,
            url,
            headers=headers,
            authorization=authorization,
            stream=stream,
            quota_of=ref,
            origin=origin,
        )
        if response.status_code != 401:
            return response
        challenge = choose_challenge(parse_challenges(response.headers.get("WWW-Authenticate", "")))
        response.close()
        if challenge is None:
            raise self._auth_error(ref, None, 401)
        if challenge.scheme == "bearer":
            # The registry may want a different or wider scope than we asked (containers/image
            # needsRetryWithUpdatedScope); ask for ours and its.
            scopes = tuple(dict.fromkeys((*scopes, *challenge.scopes)))
        with self._lock:
            host.challenge = challenge
        retry = self._authorization(host, ref, scopes, fresh=True)
        if retry is None or retry == authorization:
            raise self._auth_error(ref, challenge, 401)
        response = self._request(
            method,
            url,
            headers=headers,
            authorization=retry,
            stream=stream,
            quota_of=ref,
            origin=origin,
        )
        if response.status_code == 401:
            final = choose_challenge(parse_challenges(response.headers.get("WWW-Authenticate", "")))
            response.close()
            raise self._auth_error(ref, final or challenge, 401)
        return response

    # --- answers ---------------------------------------------------------------------------------

    def _check(self, response: requests.Response, ref: Reference, what: str, missing: str) -> None:
        """Raise the error a non-2xx status means; ``missing`` says what a 404 did not find."""
        status = response.status_code
        if status < 300:
            return
        if status == 429:
            body = b""
        else:
            body = read_body(response, ERROR_BODY_MAX_BYTES, what, self.body_deadline)
        said = server_message(body)
        host = host_of(response.url) if response.url else ref.api_host
        if status == 404:
            raise NotFound(f"{said}: {missing}" if said and missing else missing or f"{what}: 404")
        if status == 429:
            raise self._rate_limited(response, ref, what)
        if status in (401, 403):
            raise AuthError(
                f"{host} refused access to {what} ({status}{': ' + said if said else ''})"
            )
        reason = f" {redact(response.reason)}" if response.reason else ""
        detail = f": {said}" if said else ""
        # _request retries these to the end: the answer reaching here was the last attempt's.
        tried = (
            f" (tried {self.retry.attempts} times)"
            if status in RETRY_STATUSES and self.retry.attempts > 1
            else ""
        )
        raise RegistryError(f"{host} answered {status}{reason} for {what}{detail}{tried}")

    def _rate_limited(self, response: requests.Response, ref: Reference, what: str) -> RateLimited:
        seconds = retry_after(response.headers.get("Retry-After"))
        quota = _quota_of(response)
        if seconds is not None:
            when = f"try again in {say_duration(seconds)}"
        elif quota is not None and quota.window_s:
            when = (
                f"the limit is {quota.limit} pulls per {say_duration(quota.window_s)}; "
                "try again later"
            )
        else:
            when = "try again later"
        hub_like = ref.registry == DOCKER_HUB or quota is not None
        anonymous = self._credentials_for(ref) is None
        hint = f"; {_quota_hint(ref.registry, hub_like=hub_like)}" if anonymous else ""
        return RateLimited(
            f"{ref.registry} rate limit reached (429) fetching {what}; {when}{hint}", seconds
        )

    def _manifest_path(self, ref: Reference, manifest_ref: str) -> str:
        return f"/v2/{ref.repository}/manifests/{manifest_ref}"

    def _manifest_missing(self, ref: Reference) -> str:
        if ref.digest is not None:
            return f"manifest {ref.digest} not found in {ref.repo_key}"
        return f"tag {ref.manifest_ref} not found in {ref.repo_key}"

    def get_manifest(self, ref: Reference) -> FetchedManifest:
        """The manifest ``ref`` names, its digest checked against ``ref`` and the registry's."""
        what = f"manifest of {ref.familiar()}"
        send = partial(
            self._registry_request,
            ref,
            "GET",
            self._manifest_path(ref, ref.manifest_ref),
            headers={"Accept": ", ".join(ACCEPT_MANIFESTS), "Accept-Encoding": "identity"},
        )
        missing = self._manifest_missing(ref)
        body, response = self._answer(
            send, lambda r: self._check(r, ref, what, missing), MANIFEST_MAX_BYTES, what
        )
        content_type = response.headers.get("Content-Type", "")
        encoding = response.headers.get("Content-Encoding", "").lower()
        registry_digest = response.headers.get("Docker-Content-Digest")
        if encoding in ("gzip", "x-gzip", "deflate") and not is_json(body):
            body = decompress(body, MANIFEST_MAX_BYTES, what)
        if not is_json(body):
            looks_html = "html" in content_type.lower() or body.lstrip()[:1] == b"<"
            not_json = f"something that is not JSON ({redact(content_type)})"
            kind = "an HTML page" if looks_html else not_json
            raise RegistryError(
                f"{ref.familiar()}: the registry returned {kind} instead of a manifest"
            )
        digest = _hash("sha256", body)
        if ref.digest is not None:
            actual = _digest_of(body, ref.digest)
            if actual != ref.digest:
                raise DigestMismatch(
                    f"{ref.familiar()}: the registry served a manifest whose digest is {actual}"
                )
            digest = ref.digest
        if registry_digest and digest_problem(registry_digest) is None:
            actual = _digest_of(body, registry_digest)
            if actual != registry_digest:
                raise DigestMismatch(
                    f"{ref.familiar()}: Docker-Content-Digest says {registry_digest} but the "
                    f"manifest's digest is {actual}"
                )
        media_type = content_type.split(";", 1)[0].strip()
        return FetchedManifest(body, media_type, digest, ref.familiar())

    def head_manifest(self, ref: Reference) -> str | None:
        """The digest a HEAD reports (Docker Hub does not count HEADs as pulls), or None when
        the registry leaves ``Docker-Content-Digest`` out."""
        response = self._registry_request(
            ref,
            "HEAD",
            self._manifest_path(ref, ref.manifest_ref),
            headers={"Accept": ", ".join(ACCEPT_MANIFESTS)},
        )
        with response:
            if response.status_code == 404:  # a HEAD has no error body to read
                raise NotFound(self._manifest_missing(ref))
            self._check(response, ref, f"manifest of {ref.familiar()}", "")
            digest = response.headers.get("Docker-Content-Digest")
        if digest is None or digest_problem(digest) is not None:
            return None
        return digest

    def _blob_response(self, ref: Reference, digest: str, offset: int = 0) -> requests.Response:
        problem = digest_problem(digest)
        if problem is not None:
            raise RegistryError(f"{ref.familiar()}: bad blob digest: {problem}")
        # Stored bytes, please: a transport encoding would change what we hash.
        headers = {"Accept-Encoding": "identity"}
        if offset:
            headers["Range"] = f"bytes={offset}-"
        response = self._registry_request(
            ref, "GET", f"/v2/{ref.repository}/blobs/{digest}", headers=headers
        )
        if response.status_code >= 300:
            with response:
                self._check(
                    response,
                    ref,
                    f"blob {digest} of {ref.familiar()}",
                    f"blob {digest} not found in {ref.repo_key}",
                )
        return response

    def get_blob_bytes(self, ref: Reference, digest: str, max_size: int) -> bytes:
        """A small blob (an image config), at most ``max_size`` bytes, digest verified; a
        connection cut in the middle is asked for again."""
        what = f"blob {digest} of {ref.familiar()}"
        body, response = self._answer(
            partial(self._blob_response, ref, digest),
            lambda r: None,  # _blob_response checked the status
            max_size,
            what,
        )
        encoding = response.headers.get("Content-Encoding", "").lower()
        actual = _digest_of(body, digest)
        if actual != digest and encoding in ("gzip", "x-gzip", "deflate"):
            # A server that transport-encoded anyway: the stored bytes are inside.
            decoded = decompress(body, max_size, what)
            if _digest_of(decoded, digest) == digest:
                return decoded
        if actual != digest:
            raise DigestMismatch(f"{what}: the bytes received have digest {actual}")
        return body

    @contextmanager
    def open_blob(
        self, ref: Reference, digest: str, size: int | None = None
    ) -> Iterator[BlobReader]:
        """Stream a blob's stored (compressed) bytes; the caller reads in chunks and verifies
        the digest. Nothing is buffered beyond one read. A cut connection is resumed where it
        stopped (see ``BlobStream``), asking the registry again: fresh redirect, fresh token.
        ``size``: the manifest's, which the registry may not exceed."""
        response = self._blob_response(ref, digest)
        host = host_of(response.url) if response.url else ref.api_host

        def reopen(offset: int, resume: int) -> requests.Response:
            self.retry.sleep(self.retry.backoff(resume - 1))
            return self._blob_response(ref, digest, offset)

        try:
            blob = BlobStream(
                response,
                f"blob {digest} of {ref.familiar()} from {host}",
                reopen=reopen,
                max_resumes=self.blob_resumes,
                declared=size,
                progress=self.blob_progress,
            )
        except DigestMismatch:
            response.close()
            raise
        stream = BlobReader(blob, BLOB_BUFFER)
        with self._lock:
            self._downloads.add(blob)
        try:
            yield stream
        finally:
            with self._lock:
                self._downloads.discard(blob)
            blob.abandon()  # unless read to the end: a walk's thread may be in a read
            stream.close()

    def abandon_downloads(self) -> None:
        """End every blob download in progress (Ctrl-C): a read blocked in one, in whatever
        thread, returns at once with an error, and none is resumed."""
        with self._lock:
            downloads = list(self._downloads)
        for blob in downloads:
            blob.abandon()

    def list_tags(self, ref: Reference) -> Iterator[str]:
        """Every tag of ``ref``'s repository, following ``Link: <…>; rel="next"`` pages on the
        registry's own origin only, ``TAG_PAGES_MAX`` pages and ``TAGS_MAX`` tags at most.
        A tag that is not a valid tag name (``../../v2/other``) is data from a stranger: it is
        skipped with a warning, never put in a URL."""
        what = f"tags of {ref.repo_key}"
        url = f"/v2/{ref.repository}/tags/list?n={TAG_PAGE_SIZE}"
        own = origin_of(self._host(ref).base_url)
        send = partial(self._registry_request, ref, "GET", headers={"Accept": "application/json"})
        seen: set[str] = set()
        listed = 0
        while url and url not in seen:
            if len(seen) == TAG_PAGES_MAX:
                raise RegistryError(
                    f"{ref.repo_key}: the tag list goes on past {TAG_PAGES_MAX} pages, "
                    "the most layerindex reads; name the tags to index instead"
                )
            seen.add(url)
            body, response = self._answer(
                partial(send, url),
                lambda r: self._check(r, ref, what, f"repository {ref.repo_key} not found"),
                TAG_PAGE_MAX_BYTES,
                what,
            )
            try:
                document = json.loads(body)
            except (json.JSONDecodeError, UnicodeDecodeError):
                raise RegistryError(f"{ref.repo_key}: the tag list is not JSON") from None
            tags = document.get("tags") if isinstance(document, Mapping) else None
            good = [t for t in tags or () if isinstance(t, str) and is_tag(t)]
            _warn_skipped(ref, [t for t in tags or () if t not in good])
            listed += len(good)
            if listed > TAGS_MAX:
                raise RegistryError(
                    f"{ref.repo_key}: the tag list has more than {TAGS_MAX} tags, the most "
                    "layerindex reads; name the tags to index instead"
                )
            yield from good
            next_link = response.links.get("next", {}).get("url")
            url = urljoin(response.url, next_link) if next_link else ""
            if url and origin_of(url) != own:
                raise RegistryError(
                    f"{ref.repo_key}: the tag list's next page is on another host "
                    f"({redact(loggable_url(url))}); layerindex follows pages only on "
                    f"{ref.api_host}"
                )


def _warn_skipped(ref: Reference, tags: list[object]) -> None:
    """One warning for a page's tags that are not tag names, naming a few, escaped."""
    if not tags:
        return
    shown = ", ".join(repr(t)[:80] for t in tags[:3])
    more = f" and {len(tags) - 3} more" if len(tags) > 3 else ""
    log.warning(
        "%s: skipped %d tag(s) the registry listed that are not valid tag names: %s%s",
        ref.repo_key,
        len(tags),
        shown,
        more,
    )


def _quota_of(response: requests.Response) -> Quota | None:
    headers = response.headers
    return parse_quota(headers.get("RateLimit-Limit"), headers.get("RateLimit-Remaining"))


def _quota_hint(registry: str, *, hub_like: bool) -> str:
    if hub_like:
        return (
            "Docker Hub counts anonymous pulls per IP address (everyone behind the same NAT or "
            f"CI runner shares them): log in with {_login_hint(registry)} for a higher limit"
        )
    return f"log in with {_login_hint(registry)} if the registry gives accounts a higher limit"


def _urlencode(pairs: Iterable[tuple[str, str]]) -> str:
    return urlencode([(k, v) for k, v in pairs if v])
