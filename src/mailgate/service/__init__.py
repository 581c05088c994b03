"""service: the running process, built from parts.

A process is a Host (host.py: lock, store, signals, serve loop, systemd, stop order)
running a list of Parts (part.py): routing, the queue and its committers, receive,
delivery, pickup, control, and in the multi-process mode the master's workers
(master/). processes.py says which parts each kind of process runs; wiring.py holds
the factories, and nothing here wires itself at import time.
"""
