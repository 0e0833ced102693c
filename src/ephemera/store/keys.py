"""Keys, one set of names for every role (:class:`~ephemera.models.KeyRole`): issue, list,
revoke. Only a key's hash is stored; the key itself is shown once, when it is created."""

from __future__ import annotations

from datetime import timedelta

from ephemera import ids
from ephemera.context import Context
from ephemera.errors import InvalidInput, NotFound
from ephemera.models import MAX_TIMEOUT_S, AdminKey, KeyRole


def check_role(role: KeyRole | str) -> KeyRole:
    try:
        return KeyRole(role)
    except ValueError:
        raise InvalidInput("a key's role is 'admin', 'worker' or 'client'") from None


def create(ctx: Context, name: str, role: KeyRole | str, expires_in_s: float | None) -> str:
    checked = check_role(role)
    if expires_in_s is not None and not 1 <= expires_in_s <= MAX_TIMEOUT_S:
        raise InvalidInput("a key's expiry must be between 1 second and 10 years")
    now = ctx.clock.now()
    expires_at = None if expires_in_s is None else now + timedelta(seconds=expires_in_s)
    key = ids.new_key(checked)
    ctx.catalog.insert_key(
        ids.check_admin_key_name(name), ids.hash_secret(key), now, checked, expires_at
    )
    return key


def list_keys(ctx: Context, role: KeyRole | str) -> list[AdminKey]:
    return ctx.catalog.list_keys(check_role(role))


def revoke(ctx: Context, name: str, role: KeyRole | str) -> None:
    if not ctx.catalog.delete_key(name, check_role(role)):
        raise NotFound(f"no {role} key named {name!r}")


class KeyMethods:
    """The keys' part of :class:`~ephemera.store.Store` (its base class)."""

    context: Context

    def create_key(
        self,
        name: str,
        role: KeyRole | str = KeyRole.ADMIN,
        *,
        expires_in_s: float | None = None,
    ) -> str:
        """A new key of ``role`` (see :class:`KeyRole`), valid for ``expires_in_s`` or ever."""
        return create(self.context, name, role, expires_in_s)

    def list_keys(self, role: KeyRole | str = KeyRole.ADMIN) -> list[AdminKey]:
        return list_keys(self.context, role)

    def revoke_key(self, name: str, role: KeyRole | str = KeyRole.ADMIN) -> None:
        revoke(self.context, name, role)

    def has_admin_key(self) -> bool:
        return self.context.catalog.count_admin_keys() > 0
