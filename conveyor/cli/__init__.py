"""The `conveyor` command and its subcommands, and the embedded Postgres and Redis it starts."""
