pytest_plugins = ["gwcore.testing"]
