"""The SQL layer: connections, DDL, layouts and migrations, locks, COPY."""
