"""Saved artifacts as plain data (no torch): plans, profiles, importance files. Each carries a kind and a schema
version, is validated on load against what it is used for, and is written atomically (:mod:`dsa.io`)."""
