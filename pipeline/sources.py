"""What a source URI from a manifest is and may do, before anything is fetched (pipeline/fetch.py fetches):

- its identity, `source_key` (the URL without its credentials), and what a message or the lake may show of it,
  `safe_uri`;
- whether an s3:// URI names a bucket and a key at all;
- the download limits read from the environment (`download_policy`);
- the host guard: which addresses a fetch may connect to (public ones, or those COGFLOW_ALLOWED_HOSTS names), the
  checked addresses themselves, so that DNS cannot switch them between the check and the connection.

Every refusal is a FetchError with a reject code the lake records.
"""

from __future__ import annotations

import ipaddress
import os
import re
import socket
import urllib.parse
from dataclasses import dataclass

from cogflow.pipeline.settings import FIELDS
from cogflow.pipeline.storage import is_remote, split_s3


class FetchError(Exception):
    """A source that could not be fetched; `reason` is the reject code."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


# Query parameters that authenticate a request rather than select what it returns: presigned S3 URLs (SigV4
# X-Amz-*, SigV2 AWSAccessKeyId / Signature / Expires), Google Cloud Storage (X-Goog-*, GoogleAccessId), Azure SAS
# (sig), CloudFront (Policy, Key-Pair-Id) and plain tokens and keys. Names compare without case. They never reach
# the lake or a message; every other parameter is part of the source's identity, as the server sees it.
CREDENTIAL_PARAMS = frozenset(
    {
        "sig",
        "signature",
        "expires",
        "awsaccesskeyid",
        "googleaccessid",
        "policy",
        "key-pair-id",
        "token",
        "access_token",
        "id_token",
        "auth",
        "password",
        "passwd",
        "secret",
        "client_secret",
        "api_key",
        "apikey",
    }
)
CREDENTIAL_PREFIXES = ("x-amz-", "x-goog-")


def _is_credential(param: str) -> bool:
    name = urllib.parse.unquote_plus(param.split("=", 1)[0]).strip().lower()
    return name in CREDENTIAL_PARAMS or name.startswith(CREDENTIAL_PREFIXES)


def host_port(netloc: str) -> str:
    """The netloc without user:password@ (IPv6 brackets kept)."""
    return netloc.rpartition("@")[2]


def source_key(uri: str) -> str:
    """A remote source's identity, as the lake records it: the http(s) URL without user:password@, credential query
    parameters (CREDENTIAL_PARAMS) and #fragment; the rest of the query selects the resource and is kept as given.
    s3:// URIs (an S3 key is taken literally, '?' and all) and local paths come back unchanged.
    ValueError for a URL Python cannot parse (resolve_source rejects those as `malformed_uri` first)."""
    if not is_remote(uri) or uri[:5].lower() == "s3://":
        return uri
    parts = urllib.parse.urlsplit(uri)
    query = "&".join(p for p in parts.query.split("&") if p and not _is_credential(p))
    return urllib.parse.urlunsplit((parts.scheme.lower(), host_port(parts.netloc), parts.path, query, ""))


def safe_uri(uri: str) -> str:
    """What messages and logs show of a URI: its source key, which holds nothing the lake does not hold already."""
    try:
        return source_key(uri)
    except ValueError:
        return uri.split(":", 1)[0] + "://(malformed address)"


# S3 bucket names: 3-63 letters, digits, dots and hyphens, starting and ending with a letter or a digit.
_BUCKET = re.compile(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]")


def s3_uri_problem(uri: str) -> str | None:
    """Why `uri` cannot name an S3 object ('s3://..', 's3://', 's3:///key', a bucket alone), or None when it can."""
    bucket, key = split_s3(uri)
    if not bucket:
        return "the s3:// URI names no bucket"
    if not _BUCKET.fullmatch(bucket) or ".." in bucket or re.fullmatch(r"[\d.]+", bucket):
        return "the s3:// URI's bucket is not a valid bucket name (3-63 lower-case letters, digits, dots and hyphens)"
    if not key or key.endswith("/"):
        return f"s3://{bucket}/{key} names a bucket or folder, not an object"
    if any(part in (".", "..") for part in key.split("/")):
        return f"the key of s3://{bucket}/... has '.' or '..' segments, which S3 takes literally"
    return None


# --- limits of one download ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DownloadPolicy:
    """Limits read from the environment on every fetch: COGFLOW_DOWNLOAD_DEADLINE_S, COGFLOW_DOWNLOAD_MIN_RATE and
    COGFLOW_ALLOWED_HOSTS."""

    deadline_s: float = 3600.0  # the whole fetch: every attempt and redirect together
    min_rate: float = 10240.0  # bytes per second over any stretch of the read timeout; 0: no minimum
    allowed_hosts: frozenset[str] = frozenset()  # host names and addresses admitted although internal


def download_policy() -> DownloadPolicy:
    """The download limits from the environment, parsed by their typed settings (`90s`, `1h`; `10KB`, `10240`);
    SettingError, a ValueError whose message is one line naming the setting and what it accepts, for a bad one."""
    hosts = set()
    for item in os.environ.get("COGFLOW_ALLOWED_HOSTS", "").split(","):
        item = item.strip().strip("[]").rstrip(".").lower()
        if item:
            hosts.add(_normal_address(item) or item)
    return DownloadPolicy(
        deadline_s=_env_setting("COGFLOW_DOWNLOAD_DEADLINE_S", DownloadPolicy.deadline_s),
        min_rate=_env_setting("COGFLOW_DOWNLOAD_MIN_RATE", DownloadPolicy.min_rate),
        allowed_hosts=frozenset(hosts),
    )


def _env_setting(name: str, default: float) -> float:
    text = os.environ.get(name, "").strip()
    if not text:
        return default
    (setting,) = (f for f in FIELDS if f.env == name)
    return float(setting.parse(text))


# --- the host guard --------------------------------------------------------------------------------------------

# Names that mean an internal host wherever they are resolved (or that resolve only inside a cloud): refused like
# internal addresses, even on a machine where they do not resolve.
INTERNAL_NAMES = frozenset({"localhost", "metadata", "metadata.google.internal", "instance-data"})
INTERNAL_SUFFIXES = (".localhost", ".internal", ".local", ".localdomain")
_ALLOW_HINT = "add it to COGFLOW_ALLOWED_HOSTS (comma-separated names or addresses) if it is meant to be fetched"


def _normal_address(text: str) -> str | None:
    try:
        return str(ipaddress.ip_address(text))
    except ValueError:
        return None


def _embedded_ipv4(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> list[ipaddress.IPv4Address]:
    """The IPv4 addresses an IPv6 address reaches too: mapped (::ffff:a.b.c.d), compatible (::a.b.c.d), NAT64
    (64:ff9b::/96), 6to4 and Teredo."""
    if address.version == 4:
        return []
    found = [address.ipv4_mapped, address.sixtofour, address.teredo[1] if address.teredo else None]
    if int(address) >> 32 == 0 or address in ipaddress.ip_network("64:ff9b::/96"):
        found.append(ipaddress.IPv4Address(int(address) & 0xFFFFFFFF))
    return [a for a in found if a is not None]


def _internal_kind(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> str | None:
    """What makes an address internal ('loopback', 'link-local', ...), or None for a public unicast address."""
    for a in (address, *_embedded_ipv4(address)):
        for kind in ("unspecified", "loopback", "link_local", "multicast", "private", "reserved"):
            if getattr(a, f"is_{kind}"):
                return kind.replace("_", "-")
        if not a.is_global:
            return "non-public"
    return None


def checked_addresses(host: str, port: int, policy: DownloadPolicy) -> list[tuple]:
    """The addresses to connect to for host:port, each one checked: FetchError('host_not_allowed') when the host is
    or resolves to an internal address in any spelling (resolving is what normalises 2852039166, 0x7f.1 or
    ::ffff:169.254.169.254) and neither the name nor that address is on COGFLOW_ALLOWED_HOSTS."""
    name = host.rstrip(".").lower()
    listed = name in policy.allowed_hosts or _normal_address(name) in policy.allowed_hosts
    if not listed and (name in INTERNAL_NAMES or name.endswith(INTERNAL_SUFFIXES)):
        raise FetchError("host_not_allowed", f"{host} names an internal host; {_ALLOW_HINT}")
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except ValueError as exc:  # UnicodeError: a label over 63 characters, or one IDNA refuses; a NUL character
        raise FetchError("malformed_uri", f"{host[:100]!r} is not a host name DNS can look up ({exc})") from None
    if not listed:
        for info in infos:
            address = ipaddress.ip_address(info[4][0])
            kind = _internal_kind(address)
            if kind and str(address) not in policy.allowed_hosts:
                raise FetchError(
                    "host_not_allowed", f"{host} is or resolves to {address}, a {kind} address; {_ALLOW_HINT}"
                )
    return infos


def connect_checked(infos: list[tuple], timeout: float) -> socket.socket:
    """A connection to one of the checked addresses: never a fresh lookup, so DNS cannot swap in another address
    between the check and the connection. A timeout ends it (a silent host costs one timeout, not one per address)."""
    error: OSError = OSError("no address to connect to")
    for family, kind, proto, _, sockaddr in infos:
        sock = socket.socket(family, kind, proto)
        try:
            sock.settimeout(timeout)
            sock.connect(sockaddr)
            return sock
        except OSError as exc:
            sock.close()
            error = exc
            if isinstance(exc, TimeoutError):
                break
    raise error
