"""Cluster mode: the service's scoring in a Ray Serve deployment spread over the nodes of a Ray cluster.

``trustvlm serve --cluster ADDRESS --replicas N`` (:mod:`trustvlm.cluster.cli`). Cameras and robots
see the single-machine service's sockets and messages; behind its ingest, frames go to scoring
replicas (:mod:`trustvlm.cluster.replica`) through the gateway's scorer
(:mod:`trustvlm.cluster.gateway`), with bundles carried to every node verified
(:mod:`trustvlm.cluster.payload`); a camera map (``--bundles``) is served by
:mod:`trustvlm.cluster.routed` and carried by :mod:`trustvlm.cluster.map_payload`. Needs the ``cluster`` extra (``ray[serve]``); importing this
package does not import Ray.
"""
