"""Migrations tier: the migrated schema equals the declared one, on SQLite and PostgreSQL, and
upgrades keep their rows."""
