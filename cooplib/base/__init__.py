"""Base layer: errors, name registries, profiles and the statistics every chapter relies on.
Imports no other part of cooplib (the standard library, numpy/scipy/yaml only)."""
