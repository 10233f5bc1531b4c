"""One repository on one registry: URLs, the token dance and the error mapping.

Every call goes through :meth:`RegistryClient.send`, which is Ollama's ``makeRequestWithRetry``:
a 401 fetches a token (see :mod:`.auth`) and tries once more, a second 401 is
:class:`~.errors.Unauthorized`, 404 is :class:`~.errors.NotFound` and any other status of 400 or
more is ``"<code>: <body>"``. The token is remembered for the rest of the transfer.

Requests to another host (a blob's storage URL after a redirect) never carry the registry's token.
"""

from __future__ import annotations

import platform
import sys
from typing import AsyncIterator, Callable, Mapping

import attrs
import httpx

from trillama import __version__
from trillama.registry.auth import Challenge, Keypair, signed_request_text
from trillama.registry.errors import InsecureProtocol, NotFound, RegistryError, Unauthorized
from trillama.store.manifest import MANIFEST_MEDIA_TYPE
from trillama.store.names import ModelName

__all__ = ["RegistryClient", "USER_AGENT"]

USER_AGENT = (f"trillama/{__version__} ({platform.machine().lower()} {sys.platform}) "
              f"Python/{platform.python_version()}")
_ERROR_BODY_LIMIT = 4096


@attrs.define
class RegistryClient:
    """Talks to the repository ``name`` lives in (``<scheme>://<host>/v2/<namespace>/<model>``)."""

    http: httpx.AsyncClient
    name: ModelName
    keypair: Keypair
    insecure: bool = False
    token: str = ""

    def __attrs_post_init__(self) -> None:
        if self.name.scheme == "http" and not self.insecure:
            raise InsecureProtocol()

    @property
    def base_url(self) -> str:
        scheme = "http" if self.insecure else self.name.scheme
        return f"{scheme}://{self.name.host}"

    @property
    def repository_url(self) -> str:
        return f"{self.base_url}/v2/{self.name.namespace}/{self.name.model}"

    def blob_url(self, digest: str) -> str:
        return f"{self.repository_url}/blobs/{digest}"

    @property
    def manifest_url(self) -> str:
        return f"{self.repository_url}/manifests/{self.name.tag}"

    def is_registry(self, url: httpx.URL | str) -> bool:
        return httpx.URL(url).netloc.decode() == self.name.host

    # --- requests ------------------------------------------------------------------------------

    async def send(self, method: str, url: str | httpx.URL, *, headers: Mapping[str, str] | None = None,
                   content: bytes | Callable[[], AsyncIterator[bytes]] | None = None,
                   stream: bool = False) -> httpx.Response:
        """One request with Ollama's retry-on-401 rule; raises for every status of 400 or more.

        Redirects are not followed: the callers that expect one (blob downloads, uploads) read
        ``Location`` themselves. With ``stream`` the caller must close the response. A body too
        large to hold comes as a function that makes a fresh byte stream for each attempt.
        """
        for attempt in (1, 2):
            all_headers = {"User-Agent": USER_AGENT, **(headers or {})}
            if self.token and self.is_registry(url):
                all_headers["Authorization"] = f"Bearer {self.token}"
            body = content() if callable(content) else content
            request = self.http.build_request(method, url, headers=all_headers, content=body)
            try:
                response = await self.http.send(request, stream=True)
            except httpx.TransportError as exc:
                raise RegistryError(f"{method} {request.url}: {str(exc) or type(exc).__name__}") from None
            if response.status_code == 401 and attempt == 1 and self.is_registry(url):
                challenge = Challenge.parse(response.headers.get("www-authenticate", ""))
                await response.aclose()
                if challenge is None:
                    raise Unauthorized()
                self.token = await self._fetch_token(challenge, str(url))
                continue
            if response.status_code >= 400:
                body = (await _read_upto(response, _ERROR_BODY_LIMIT)).decode("utf-8", "replace").strip()
                if response.status_code == 401:
                    raise Unauthorized()
                if response.status_code == 404:
                    raise NotFound()
                raise RegistryError(f"{response.status_code}: {body}")
            if not stream:
                await response.aread()
                await response.aclose()
            return response
        raise AssertionError("unreachable")  # pragma: no cover

    async def _fetch_token(self, challenge: Challenge, request_url: str) -> str:
        challenge.check_host(request_url)
        url = challenge.token_url()
        if self.insecure:
            url = str(httpx.URL(url).copy_with(scheme="http"))
        headers = {"User-Agent": USER_AGENT,
                   "Authorization": self.keypair.authorization(signed_request_text(url))}
        response = await self.http.get(url, headers=headers)
        if response.status_code >= 400:
            if response.status_code in (401, 403):
                raise Unauthorized()
            raise RegistryError(f"{response.status_code}: {response.text[:_ERROR_BODY_LIMIT]}")
        try:
            token = response.json()["token"]
        except (ValueError, KeyError, TypeError):
            raise RegistryError("registry token response has no token") from None
        if not isinstance(token, str):
            raise RegistryError("registry token response has no token")
        return token

    # --- the calls pull and push make ------------------------------------------------------------

    async def get_manifest(self, limit: int) -> bytes:
        response = await self.send("GET", self.manifest_url, headers={"Accept": MANIFEST_MEDIA_TYPE},
                                   stream=True)
        data = await _read_upto(response, limit + 1)
        if len(data) > limit:
            raise RegistryError(f"manifest larger than {limit} bytes")
        return data

    async def blob_size(self, digest: str) -> int:
        response = await self.send("HEAD", self.blob_url(digest))
        try:
            return int(response.headers["content-length"])
        except (KeyError, ValueError):
            raise RegistryError(f"registry gave no size for {digest}") from None

    async def blob_exists(self, digest: str) -> bool:
        try:
            await self.send("HEAD", self.blob_url(digest))
        except NotFound:
            return False
        return True

    async def blob_location(self, digest: str) -> httpx.URL:
        """Where the blob's bytes are served: a storage URL the registry redirects to, or itself.

        Asks for one byte only: a registry that serves the blob itself would otherwise start
        sending all of it, just to be hung up on.
        """
        response = await self.send("GET", self.blob_url(digest), headers={"Range": "bytes=0-0"},
                                   stream=True)
        await response.aclose()
        if response.status_code in (301, 302, 303, 307, 308) and "location" in response.headers:
            return response.url.join(response.headers["location"])
        return response.url


async def _read_upto(response: httpx.Response, limit: int) -> bytes:
    """At most ``limit`` bytes of a streamed body, then close it (a body may be huge or hostile)."""
    data = bytearray()
    try:
        async for chunk in response.aiter_bytes():
            data += chunk
            if len(data) >= limit:
                break
    finally:
        await response.aclose()
    return bytes(data[:limit])
