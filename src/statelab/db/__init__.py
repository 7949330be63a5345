"""SQL storage: models, the engine, Alembic migrations."""
