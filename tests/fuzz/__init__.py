"""A generator of push requests, near valid and not, and what the receiver must answer.

``requests`` draws a request (route, body, headers) with hypothesis; ``Ledger`` checks
each answer and, at the end, that Kafka holds what was acknowledged and the dead-letter
topic what was refused. ``tests/sources/ticketure/test_fuzz.py`` runs a few hundred cases
against an in-process receiver; ``make fuzz`` (``python -m tests.fuzz``) runs 100,000
against ``streamproc receive`` on the local broker.
"""
