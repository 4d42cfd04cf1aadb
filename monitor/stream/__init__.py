"""The live driver: the only package that imports faust."""
