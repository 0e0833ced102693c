"""Integration tier: real backends (SQLite, PostgreSQL, an S3-protocol server), the HTTP app in
process, a webhook receiver on a socket, and the cleanup model's long random runs; the contract
suites run here on every combination of database and blob store."""
