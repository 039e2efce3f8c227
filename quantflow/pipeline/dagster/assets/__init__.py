"""One module per stage group, each a ``build_<group>_assets(metadata)`` factory."""
