"""The compile side of pyrecks: return-string grammar, kernel checker, compiler and store."""
