"""The centre's database: its schema and migrations (``schema``) and the store (``store``: connections,
the one writer thread, the queries). SQLite is the only backend so far.
"""
