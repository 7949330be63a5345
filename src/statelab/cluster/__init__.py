"""Supervising real processes: redis-server, postgres, replicas, workers, haproxy.

``servers`` runs single binaries; ``haproxy`` renders the load balancer's config
and talks to its runtime API; ``supervisor`` starts a whole cluster and keeps it
running; ``control`` is the supervisor's HTTP API and the client the CLI uses.
"""
