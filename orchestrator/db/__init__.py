"""The database: tables, engine, the one state writer, and the named locking queries."""
