"""Folder import: files under a root into a session, exactly once each, then as they change."""
