"""Every wire shape of the pipeline, decoded and encoded in one place.

``ticketmatic``: eventstream pages and items, ids and times, and the cursor records;
``ticketure``: the audit records Ticketure's Push API sends and the receiver writes;
``mparticle``: mParticle's batch, what streamproc sends and what a sender may post;
``envelope``: the headers every record carries and the one list of sources.

These modules import nothing of the roles or of Kafka: the sources, the mapping, the sinks
and the simulators all read and write through them.
"""
