"""The physics test kit every backbone must pass (importable by users and tests)."""
