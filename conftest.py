pytest_plugins = ("conveyor.shared.testing.fixtures",)
