"""Command-line interfaces: ``pyrecksc`` (compile side) and ``pyrecks`` (run side)."""
