"""Mapping source items to mParticle batches: pure (no I/O, no clock, no Kafka).

``record.plan`` takes one source record (headers and value) and says what becomes of it;
``router.map_record`` maps it to Mapped / Unknown / Unmappable; ``ticketmatic`` and
``ticketure`` hold the per-source rules, ``limits`` and ``fit`` mParticle's limits,
``identity`` and ``ids`` the deterministic ids and the dedupe hash, ``amounts`` the number
rules. The output format is :mod:`streamproc.formats.mparticle`. The ``streamproc map``
stage that runs this on Kafka is :mod:`streamproc.mapper`.
"""
