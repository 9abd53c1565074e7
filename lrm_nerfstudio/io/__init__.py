"""File I/O at the bottom of the layers: weights files, ns-train checkpoints, atomic writes. Imports no other
part of the package."""
