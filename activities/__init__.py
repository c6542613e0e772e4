"""Every side effect skyshift performs, one module (or package) per capability."""
