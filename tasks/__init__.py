"""Task bodies, one module per kind of job. Thin: each calls one function in `conveyor/`."""
