"""GPU work on Ray Serve replicas (``--cluster``): one replica per GPU, on this machine or the LAN.

Nothing imports this package unless ``--cluster`` is given, and nothing here is imported at the
package's import: the embedded app never loads Ray (a test checks ``sys.modules``).

- ``backends.cluster.replica``: the Serve deployment. Each replica builds its own ``Studio``
  (registry and memory manager for its one device) and runs jobs as streams of events.
- ``backends.cluster.board``: a small Ray actor where replicas post their status and read Stop
  and unload requests, since a Serve handle cannot address one replica.
- ``backends.cluster.front``: the app side: starts or joins the cluster, routes each job to a
  replica with Serve's model multiplexing, and gives the tabs the registry's ``run``/``stream``.
"""
