"""Mapping source items to mParticle batches, and the ``streamproc map`` stage around it.

The mapping itself is pure (no I/O, no clock): ``router.map_record`` takes one source
record and returns Mapped / Unknown / Unmappable; ``ticketmatic`` and ``ticketure`` hold
the per-source rules, ``batch`` the output format (``schemas/mparticle/``), ``limits`` and
``fit`` mParticle's limits, ``ids`` the deterministic ids, ``amounts`` the number rules.
"""
