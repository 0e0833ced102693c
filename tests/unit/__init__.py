"""Unit tier (`make test-fast`): in process, on fakes or SQLite and files in a temporary
directory; no PostgreSQL, S3, HTTP server or subprocess. The whole tier runs in seconds."""
