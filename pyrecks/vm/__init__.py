"""The run side of pyrecks: chain records, the sandbox, the kernel loader and the VM loop."""
