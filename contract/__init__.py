"""What calibration and the runtime must agree on, in one place.

This package holds the file formats and names that cross the boundary between the build-time
stages (export, calibration) and the runtime: the export manifest and its readers, the prototype
bundle and its verifying loader, the threshold record, the trust head's input and output names,
the table of scores a bundle can threshold on, and the small file utilities both sides use
(sha256, atomic JSON and folder publishing, JSON-safe floats).

It imports only the standard library and numpy, never another ``trustvlm`` package, so every
stage can depend on it without depending on each other.

Modules: :mod:`files`, :mod:`manifest`, :mod:`scores`, :mod:`threshold`, :mod:`bundle`.
"""
