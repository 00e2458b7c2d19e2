"""``make chaos``: the whole pipeline under faults, and a verdict on what was lost.

``python -m tests.chaos`` starts a Kafka broker of its own (a free port, data in a
temporary folder), the Ticketmatic and mParticle simulators and a Ticketure pusher as
processes, and every role as a separate process (poll, receive, map x2, deliver x2). While
items flow in from two Ticketmatic accounts and from Ticketure pushes, it applies faults
scheduled from a seed: a random role SIGKILLed every few seconds and restarted, the broker
stopped (SIGTERM or SIGKILL) and started again on the same port and data, a 429 storm and
a 503 outage at mParticle, an outage at Ticketmatic. Then it waits, bounded, for the drain
and compares what was acknowledged with what mParticle stored.

Modules: :mod:`.options` (settings from CHAOS_* variables), :mod:`.schedule` (the fault
plan), :mod:`.children` (processes stopped by pid), :mod:`.stack` (broker, simulators,
roles), :mod:`.pusher` (the Ticketure pusher process), :mod:`.inputs` (feeding and reading
the sources), :mod:`.ledger` (acknowledged against delivered), :mod:`.faults` (applying
the plan), :mod:`.verdict` (the table and the JSON line), :mod:`.run` (the timeline).
"""
