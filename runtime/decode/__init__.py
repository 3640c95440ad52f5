"""Decode: a received frame's bytes -> the pixels each image encoder takes.

The second stage of a frame's path (ingest -> decode -> scoring -> publish). Strict image decoding
with its format guards (:mod:`.image_codec`), resizing and cropping as the encoder was trained
(:mod:`.preprocess`), GPU decoding (:mod:`.gpu_decode`), and the pool of threads that decodes the
next batch while the encoder scores this one (:mod:`.decode_pool`). Imports the runtime's shared
vocabulary (frames, messages, schema) and nothing of the other rooms.
"""
