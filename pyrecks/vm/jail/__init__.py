"""The jail: kernel code runs only in confined child processes (cells) of the VM."""
