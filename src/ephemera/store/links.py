"""Signed download links: one artifact's bytes, without credentials, until the link expires.

A link names a session, an artifact, the artifact's sha256, when it was issued and when it
expires (Unix seconds) and a disposition, and carries an HMAC-SHA256 of them under the signing
key it names by ID. It dies at its expiry or ``link_max_ttl_s`` after it was issued, whichever
comes first: lowering the setting shortens the links already out. The
keys live in the catalog, so every replica shares them: the newest key not revoked signs,
every key not revoked verifies (rotate, then revoke the old key once its links may die).

A link is checked in this order; every refusal up to the expiry is the same
:class:`~ephemera.errors.LinkRefused`, so an answer never tells which check failed::

    well formed --> its key known --> its key not revoked --> signature (constant time)
        --> not expired --> session live, artifact ready, sha256 still the signed one
                                                                   (else NotFound)

Only a refusal before the key is found revoked, or at the signature, may be a guess at a
link (``LinkRefused.guess``): an expired link passed the signature, and under a revoked key
nothing opens whatever the signature.

The MAC covers the exact text of each field, so changing any character of a link refuses it.
Serving a link is not activity of its session: a link handed to a browser or a page does not
keep a session alive, and dies with it.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import math
import re
import secrets
import string
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import cached_property

from ephemera import ids
from ephemera.blobs import PresignedReads, artifact_key
from ephemera.context import Context
from ephemera.errors import InvalidInput, LinkRefused, NotFound
from ephemera.integrity import refuse_flagged
from ephemera.models import Artifact, LinkKey
from ephemera.store import artifacts

DISPOSITIONS = ("attachment", "inline")
# The longest life of a presigned URL a link redirects to: it is followed at once, and it
# outlives a revocation of the link's key (though not the deletion of the bytes).
REDIRECT_MAX_S = 300

_VERSION = "ephemera-link-v1"
_KEY_ID_CHARS = string.ascii_letters + string.digits
_KEY_ID_RE = re.compile(r"[A-Za-z0-9]{12}")
# 32 bytes in unpadded base64url. Compared as text: two texts that decode alike (the last
# character has two spare bits) are still two different links.
_SIGNATURE_RE = re.compile(r"[A-Za-z0-9_-]{43}")
_TIME_RE = re.compile(r"[1-9][0-9]{0,11}")
_SHA256_RE = re.compile(r"[0-9a-f]{64}")
_FIELDS = ("sha256", "issued", "expires", "disposition", "key", "signature")
_REFUSED = "this link is not valid: it was changed, has expired, or its key was revoked"


@dataclass(frozen=True, slots=True)
class SignedLink:
    """What a link says; ``query`` is its URL's query, beside the session and artifact IDs."""

    session_id: str
    artifact_id: str
    sha256: str
    issued: int
    expires: int
    disposition: str
    key_id: str
    signature: str

    @property
    def expires_at(self) -> datetime:
        return datetime.fromtimestamp(self.expires, UTC)

    def query(self) -> dict[str, str]:
        return {
            "sha256": self.sha256,
            "issued": str(self.issued),
            "expires": str(self.expires),
            "disposition": self.disposition,
            "key": self.key_id,
            "signature": self.signature,
        }


def _message(session_id: str, artifact_id: str, fields: dict[str, str]) -> bytes:
    parts = (_VERSION, fields["key"], session_id, artifact_id, fields["sha256"])
    times = (fields["issued"], fields["expires"])
    return "\n".join((*parts, *times, fields["disposition"])).encode()


def _mac(secret: bytes, message: bytes) -> str:
    digest = hmac.new(secret, message, hashlib.sha256).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


def _deadline(ctx: Context, issued: int, expires: int) -> int:
    """When a link dies: a link signed before link_max_ttl_s was lowered lives no longer
    than the setting now says."""
    return min(expires, issued + ctx.settings.link_max_ttl_s)


def _refused(*, guess: bool = True) -> LinkRefused:
    return LinkRefused(_REFUSED, guess=guess)


def new_key(ctx: Context) -> LinkKey:
    key_id = "".join(secrets.choice(_KEY_ID_CHARS) for _ in range(12))
    secret = secrets.token_bytes(32)
    now = ctx.clock.now()
    ctx.catalog.insert_link_key(key_id, secret, now)
    return LinkKey(id=key_id, created_at=now, revoked_at=None)


def create(
    ctx: Context, session_id: str, artifact_id: str, expires_in_s: int, disposition: str
) -> SignedLink:
    if isinstance(expires_in_s, bool) or not isinstance(expires_in_s, int):
        raise InvalidInput("expires_in_s must be a whole number of seconds")
    longest = ctx.settings.link_max_ttl_s
    if not 1 <= expires_in_s <= longest:
        raise InvalidInput(f"expires_in_s must be between 1 and {longest} (link_max_ttl_s)")
    if disposition not in DISPOSITIONS:
        raise InvalidInput("disposition must be 'attachment' or 'inline'")
    artifact = artifacts.get(ctx, session_id, artifact_id)
    key = ctx.catalog.signing_link_key()
    if key is None:
        # The first link of a store makes its first key. Two replicas doing so at once make
        # two keys: both verify, the newer signs.
        new_key(ctx)
        key = ctx.catalog.signing_link_key()
    if key is None or key.secret is None:
        raise InvalidInput("no link key: rotate one (ephemera link-key rotate)")
    issued = math.ceil(ctx.clock.now().timestamp())
    fields = {
        "sha256": artifact.sha256,
        "issued": str(issued),
        "expires": str(issued + expires_in_s),
        "disposition": disposition,
        "key": key.id,
    }
    signature = _mac(key.secret, _message(session_id, artifact_id, fields))
    return SignedLink(
        session_id=session_id,
        artifact_id=artifact_id,
        sha256=artifact.sha256,
        issued=issued,
        expires=int(fields["expires"]),
        disposition=disposition,
        key_id=key.id,
        signature=signature,
    )


def verify(
    ctx: Context, session_id: str, artifact_id: str, query: Sequence[tuple[str, str]]
) -> SignedLink:
    """The link these parts make, if it is signed by a key not revoked, not expired, and
    issued no longer than ``link_max_ttl_s`` ago."""
    fields = dict(query)
    if len(query) != len(_FIELDS) or sorted(fields) != sorted(_FIELDS):
        raise _refused()
    well_formed = (
        ids.SESSION_ID_RE.fullmatch(session_id)
        and ids.ARTIFACT_ID_RE.fullmatch(artifact_id)
        and _SHA256_RE.fullmatch(fields["sha256"])
        and _TIME_RE.fullmatch(fields["issued"])
        and _TIME_RE.fullmatch(fields["expires"])
        and fields["disposition"] in DISPOSITIONS
        and _KEY_ID_RE.fullmatch(fields["key"])
        and _SIGNATURE_RE.fullmatch(fields["signature"])
    )
    if not well_formed:
        raise _refused()
    key = ctx.catalog.find_link_key(fields["key"])
    if key is None:
        raise _refused()
    if key.revoked_at is not None or key.secret is None:
        raise _refused(guess=False)
    expected = _mac(key.secret, _message(session_id, artifact_id, fields))
    if not hmac.compare_digest(expected, fields["signature"]):
        raise _refused()
    issued, expires = int(fields["issued"]), int(fields["expires"])
    if ctx.clock.now().timestamp() >= _deadline(ctx, issued, expires):
        raise _refused(guess=False)
    return SignedLink(
        session_id=session_id,
        artifact_id=artifact_id,
        sha256=fields["sha256"],
        issued=issued,
        expires=expires,
        disposition=fields["disposition"],
        key_id=key.id,
        signature=fields["signature"],
    )


def linked_artifact(ctx: Context, link: SignedLink) -> Artifact:
    """The artifact of a verified link: NotFound once its session or it is gone, or its
    bytes are no longer those the link was signed for. No session activity is recorded."""
    gone = NotFound("this link's artifact is gone")
    if not ctx.catalog.is_live(link.session_id, ctx.clock.now()):
        raise gone
    artifact = ctx.catalog.get_artifact(link.session_id, link.artifact_id)
    if artifact is None or not hmac.compare_digest(artifact.sha256, link.sha256):
        raise gone
    return artifact


class LinkMethods:
    """The download links' part of :class:`~ephemera.store.Store` (its base class)."""

    context: Context

    @cached_property
    def _presigned(self) -> PresignedReads | None:
        blobs = self.context.blobs
        return blobs if isinstance(blobs, PresignedReads) else None

    def create_link(
        self,
        session_id: str,
        artifact_id: str,
        *,
        expires_in_s: int,
        disposition: str = "attachment",
    ) -> SignedLink:
        """Sign a link to a ready artifact of a live session, valid for ``expires_in_s``
        (at most ``link_max_ttl_s``); ``disposition`` is ``attachment`` or ``inline``.

        The caller has authorised the request: nothing here checks a credential."""
        return create(self.context, session_id, artifact_id, expires_in_s, disposition)

    def open_link(
        self, session_id: str, artifact_id: str, query: Sequence[tuple[str, str]]
    ) -> tuple[SignedLink, Artifact]:
        """The link these URL parts make and its artifact.

        LinkRefused, whatever the reason, for a link that is malformed, changed in any
        character, expired or signed by a revoked key; NotFound for a genuine link whose
        session or artifact is gone or whose bytes changed."""
        link = verify(self.context, session_id, artifact_id, query)
        return link, linked_artifact(self.context, link)

    def presigned_link_url(
        self, link: SignedLink, artifact: Artifact, content_disposition: str
    ) -> str | None:
        """Where a link may send its client instead of streaming the bytes: a presigned URL
        of the blob store, valid at most ``REDIRECT_MAX_S`` and never past the link. None
        unless ``link_redirect`` is set, the blob store signs URLs and the link is an
        attachment."""
        if not self.context.settings.link_redirect or self._presigned is None:
            return None
        if link.disposition != "attachment":
            # The bucket's answer cannot carry our sandbox headers (CSP sandbox, nosniff): an
            # inline HTML or SVG page would run its script on the bucket's origin. A download
            # saved as a file runs nothing, whatever its type.
            return None
        refuse_flagged(artifact)
        deadline = _deadline(self.context, link.issued, link.expires)
        remaining = deadline - self.context.clock.now().timestamp()
        lifetime = min(REDIRECT_MAX_S, math.floor(remaining))
        if lifetime < 1:
            return None  # a second or less left: served here rather than a dead URL
        return self._presigned.presigned_get(
            artifact_key(artifact.session_id, artifact.id),
            lifetime,
            content_type=artifact.content_type,
            content_disposition=content_disposition,
            endpoint_url=self.context.settings.s3_public_endpoint,
        )

    def refuse_link(self) -> LinkRefused:
        """The one refusal of every link that does not open anything."""
        return _refused()

    def rotate_link_key(self) -> LinkKey:
        """A new signing key: links are signed with it from now on; older keys still verify."""
        return new_key(self.context)

    def list_link_keys(self) -> list[LinkKey]:
        """Every signing key, newest first, revoked ones included (never their secrets)."""
        return self.context.catalog.list_link_keys()

    def revoke_link_key(self, key_id: str) -> None:
        """Revoke a key at once: every link it signed is refused from now on."""
        if not self.context.catalog.revoke_link_key(key_id, self.context.clock.now()):
            raise NotFound(f"no link key {key_id!r} that is not revoked")
