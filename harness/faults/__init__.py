"""The fault zoo: deliberately broken backends that the smoke suite must catch.

`catalogue.FAULTS` names each fault (the incident class it mirrors, where the bug lives,
the correct backend it derives from); `mutate` plants faults inside kernel sources;
`zoo.run_zoo` runs a suite against the unmutated bases and every fault and returns the
kill matrix (`zoo.write_kill_matrix` writes it as JSON and Markdown).

Submodules are imported lazily: importing a fault backend imports the triton backend,
which must see TRITON_INTERPRET=1 before triton is imported on a machine without a GPU.
"""
__all__ = ["catalogue", "mutate", "zoo"]
