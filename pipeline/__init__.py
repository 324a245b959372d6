"""Pipeline definition, settings, runners and the `skinlesion` CLI."""
