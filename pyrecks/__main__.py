"""``python -m pyrecks`` is the ``pyrecks`` command."""

from pyrecks.cli.pyrecks_main import main

main()
