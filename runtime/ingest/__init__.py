"""Ingest: messages in -> checked frames, or counted rejections, in the latest-frame-wins buffer.

The first stage of a frame's path (ingest -> decode -> scoring -> publish). The ingest interface
(:mod:`.ingest`), the wire format and its checks (:mod:`.wire`), ZeroMQ sockets (:mod:`.transport`,
also used by the publisher) and CurveZMQ (:mod:`.security`), replay checks (:mod:`.sequence`) and the
frame buffer (:mod:`.frame_buffer`). Imports the shared vocabulary and the decoders' size probes
(:mod:`trustvlm.runtime.decode.image_codec`), nothing of scoring.
"""
