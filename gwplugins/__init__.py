"""Built-in gwcore plugins, registered by default and each removable by name.

They use only hook contexts and gwcore's public API, so they also show how a
plugin is written.
"""
