"""The Alembic environment of the store: runs the migrations of `versions/` on one connection.

There is no alembic.ini: `server.store.store.alembic_config(url)` builds the Config in code and
`Store.upgrade()` hands its own connection (already in a transaction, holding the migration
lock) through `config.attributes["connection"]`. Given only a URL (the `alembic` command line
with a config from `alembic_config`), it opens a connection of its own.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import context

from server.store.models import Base

config = context.config
target_metadata = Base.metadata


def run_on(connection: sa.Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        compare_type=True,
        # SQLite cannot ALTER most things: later migrations rebuild tables in batch mode.
        render_as_batch=connection.dialect.name == "sqlite",
    )
    with context.begin_transaction():
        context.run_migrations()


def run_offline() -> None:
    context.configure(url=config.get_main_option("sqlalchemy.url"),
                      target_metadata=target_metadata, literal_binds=True)
    with context.begin_transaction():
        context.run_migrations()


def run_online() -> None:
    given = config.attributes.get("connection")
    if given is not None:
        run_on(given)
        return
    engine = sa.create_engine(config.get_main_option("sqlalchemy.url") or "",
                              poolclass=sa.pool.NullPool)
    try:
        with engine.connect() as connection:
            run_on(connection)
            connection.commit()
    finally:
        engine.dispose()


if context.is_offline_mode():
    run_offline()
else:
    run_online()
