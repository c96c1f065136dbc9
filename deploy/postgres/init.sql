-- Runs once, when the postgres volume is first initialised (docker-entrypoint-initdb.d).
-- The migrations need pgvector; creating an extension takes a superuser, which the application
-- role is only in this development compose file, so do it here rather than rely on it there.
CREATE EXTENSION IF NOT EXISTS vector;
