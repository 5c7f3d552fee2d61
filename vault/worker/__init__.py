"""The worker: ``flask vault worker`` runs the vault's jobs every interval (docs/architecture.md,
"Worker").

``jobs`` is the list of what a cycle does; ``schedule`` claims scheduled jobs in the database;
``heartbeat`` records that a worker ran; ``runner`` is the loop with its signal handling.
"""
