"""The Hive's pure domain: its state, `decide`, `evolve`, the policies, healing and reputation,
and the placement rules every projection of the log shares (`placement.py`).

Nothing here does I/O: it imports only `schemas`, the standard library and pydantic, so the Hive,
the scheduler, the pods, the CLI's time travel and the tests fold the log the same way.
"""
